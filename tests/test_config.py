# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Global switches: the retained host memory, in fresh processes (the setting is process-wide and one-way)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from monai_fine.data import make_phantom_dataset

TESTS = Path(__file__).resolve().parent
MIB = 1 << 18  # float32 values in 1 MiB
SIZES_MIB = (64, 96, 48, 80)  # all above glibc's largest mmap threshold (32 MiB)
PAGES = sum(SIZES_MIB) * 2 * 256  # 4 KiB pages a round writes: each tensor and a temporary of its size

# what a process measures: rounds shaped like training steps (tensors kept to the round's end, temporaries freed at
# once, the same sizes every round); per round its minor page faults and the resident memory after it (MiB)
PROBE = f"""
import resource, torch
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
def rounds(n=12):
    out = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        kept = []
        for size in {SIZES_MIB}:
            kept.append(torch.empty(size * {MIB}).fill_(1.0))
            temporary = kept[-1] * 2
            del temporary
        del kept
        out.append([resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, rss()])
    return out
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning: Linux only")


def _run(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", PROBE + code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mostly_without_faults(faults: list[int]) -> bool:
    """The last six rounds: most without a fault, and all together less than half a default round's faults."""
    return statistics.median(faults[-6:]) < 0.01 * PAGES and sum(faults[-6:]) < 0.5 * PAGES


def test_freed_memory_is_reused_without_page_faults_once_retained():
    code = """
import json
from monai_fine.config import retain_freed_cpu_memory
default = rounds()
done = retain_freed_cpu_memory()
again = retain_freed_cpu_memory()  # idempotent
print(json.dumps({"default": default, "done": done, "again": again, "retained": rounds()}))
"""
    res = _run(code)
    assert res["done"] is True and res["again"] is True
    faults = {k: [f for f, _ in res[k]] for k in ("default", "retained")}
    # by default every block is a fresh mmap, given back when freed: each round faults all its pages in anew
    assert min(faults["default"]) >= 0.9 * PAGES, res
    # retained: within a few rounds the freed blocks serve the next round's (a block may still fault in now and then),
    # and the process stops growing: less than one round's tensors over the last six rounds
    assert _mostly_without_faults(faults["retained"]), res
    resident = [r for _, r in res["retained"]]
    assert resident[-1] - resident[-7] < sum(SIZES_MIB), res


@pytest.mark.parametrize("retain", [True, False])
def test_bundle_training_retains_host_memory_unless_turned_off(tmp_path, retain):
    data = tmp_path / "data"
    make_phantom_dataset(data, num_cases=2, seed=1, shape=(32, 32, 16), spacing=(4.0, 4.0, 4.0), num_test=0,
                         val_fraction=0.5)  # fmt: skip
    code = f"""
import json
from bundle_common import workflow
wf = workflow(["train.json"], "train", bundle_root={str(tmp_path / "run")!r}, dataset_dir={str(data)!r},
              retain_cpu_memory={retain!r})
print(json.dumps({{"faults": [f for f, _ in rounds()]}}))
"""
    faults = _run(code)["faults"]
    if retain:
        assert _mostly_without_faults(faults), faults
    else:
        assert min(faults) >= 0.9 * PAGES, faults
