# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""step_at_commits times the package of each commit, not the checkout it runs from."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.step_at_commits import export_package, main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs the git checkout")
def test_each_commit_is_exported_and_timed_in_its_own_process(tmp_path):
    sha = export_package(REPO, "HEAD", tmp_path)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert sha == head.stdout.strip() and (tmp_path / "monai_fine" / "networks").is_dir()
    out = main(["--base", "HEAD", "--new", "HEAD", "--pairs", "1", "--steps", "1", "--threads", "1"])
    assert out["base"] == out["new"] == sha[:7] and out["pairs"] == 1
    assert out["base_ms"] > 0 and out["new_ms"] > 0
    assert out["base_over_new"] == pytest.approx(out["base_ms"] / out["new_ms"], rel=1e-3)
    with pytest.raises(subprocess.CalledProcessError):
        export_package(REPO, "no-such-commit", tmp_path / "x")
