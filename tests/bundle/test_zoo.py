# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The Model Zoo zip: layout, large_files.yml, and a real download over HTTP on 127.0.0.1 used in a fresh venv.

The slow test creates (once per session) a virtual environment WITHOUT system site packages holding only torch
(``$MONAI_FINE_TORCH_SPEC``, default ``torch==2.13.0``, installed first) and what ``metadata.json`` declares
(``monai_version`` + ``required_packages_version``), never ``monai_fine``: the zip must carry the code.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_fine.bundle_tools import BUNDLE_NAME, create_network, package_bundle

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
META = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
TINY = {"preset": "tiny", "feature_size": 12, "num_heads": [1, 2, 2, 4], "roi_size": [32, 32, 16]}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(create_network(**TINY).state_dict(), path)
    return path


def test_zip_layout(tmp_path, tiny_weights):
    path = Path(package_bundle(tmp_path, weights=tiny_weights))
    assert path.name == f"{BUNDLE_NAME}_v{META['version']}.zip"
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {n.split("/")[0] for n in names} == {BUNDLE_NAME}  # one top folder, named after the bundle
        for f in ["LICENSE", "configs/metadata.json", "configs/inference.json", "configs/train.json",
                  "docs/README.md", "models/model.pt", "monai_fine/__init__.py", "monai_fine/bundle_tools.py",
                  "monai_fine/networks/nets/fine.py"]:
            assert f"{BUNDLE_NAME}/{f}" in names, f
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert max(i.file_size for i in zf.infolist()) <= 25 * 2**20  # the Zoo's per-file limit
        assert zf.read(f"{BUNDLE_NAME}/models/model.pt") == tiny_weights.read_bytes()
    # what the configs import is declared or shipped: monai_fine is shipped, so it is not a package to install
    assert "monai_fine" not in META["required_packages_version"] and "pyyaml" in META["required_packages_version"]


def test_large_weights_go_to_large_files_yml(tmp_path, tiny_weights):
    with pytest.raises(ValueError, match="weights_url"):
        package_bundle(tmp_path, weights=tiny_weights, max_file_mb=0.5)
    url = "https://example.org/fine/model.pt"
    path = package_bundle(tmp_path, weights=tiny_weights, weights_url=url, max_file_mb=0.5)
    import yaml

    with zipfile.ZipFile(path) as zf:
        assert f"{BUNDLE_NAME}/models/model.pt" not in zf.namelist()
        entry = yaml.safe_load(zf.read(f"{BUNDLE_NAME}/large_files.yml"))["large_files"][0]
    assert entry == {"path": "models/model.pt", "url": url, "hash_type": "md5",
                     "hash_val": hashlib.md5(tiny_weights.read_bytes()).hexdigest()}
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        package_bundle(tmp_path, weights=tmp_path / "missing.pt")


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory) -> Path:
    """A venv with only torch and the bundle's declared packages (no system site packages, no monai_fine)."""
    root = tmp_path_factory.mktemp("zoo_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q"]
    torch_spec = os.environ.get("MONAI_FINE_TORCH_SPEC", f"torch=={torch.__version__.split('+')[0]}")
    subprocess.run(pip + [torch_spec], check=True)
    pkgs = [f"monai=={META['monai_version']}"] + [f"{k}=={v}" for k, v in META["required_packages_version"].items()]
    subprocess.run(pip + [torch_spec] + pkgs, check=True)
    return root / "bin" / "python"


@pytest.fixture()
def http_dir(tmp_path):
    """Serve ``tmp_path/www`` on 127.0.0.1 (a free port) from a thread."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_download_and_run_in_fresh_venv(tmp_path, tiny_weights, http_dir, fresh_venv, totalseg_dir):
    www, base = http_dir
    # weights over the (here lowered) per-file limit: large_files.yml points to them on the same server
    (www / "model.pt").write_bytes(tiny_weights.read_bytes())
    zip_path = Path(package_bundle(www, weights=tiny_weights, weights_url=f"{base}/model.pt", max_file_mb=0.5))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    bundles = tmp_path / "bundles"
    run = functools.partial(subprocess.run, env=env, capture_output=True, text=True, timeout=900)

    # 1. MONAI's own downloader, from the fresh venv
    res = run([str(fresh_venv), "-m", "monai.bundle", "download", "--name", BUNDLE_NAME,
               "--url", f"{base}/{zip_path.name}", "--bundle_dir", str(bundles)])
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = bundles / BUNDLE_NAME
    assert (bundle / "configs" / "metadata.json").is_file() and not (bundle / "models" / "model.pt").exists()
    res = run([str(fresh_venv), "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (bundle / "models" / "model.pt").read_bytes() == tiny_weights.read_bytes()
    res = run([str(fresh_venv), "-c", "import monai_fine"], cwd=tmp_path)
    assert res.returncode != 0  # the venv really has no monai_fine: only the bundle folder provides it

    # 2. inference as the bundle README says (from the bundle folder), on the real example CT
    data = tmp_path / "data" / "imagesTs"
    data.mkdir(parents=True)
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    (data / ct.name).write_bytes(ct.read_bytes())
    out = tmp_path / "seg"
    res = run([str(fresh_venv), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--dataset_dir", str(data.parent), "--output_dir", str(out), "--overlap", "0", "--sw_batch_size", "4"],
              cwd=bundle)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    [seg] = list(out.glob("*.nii.gz"))
    pred, ref = nib.load(str(seg)), nib.load(str(ct))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= set(range(14))

    # 3. monai.bundle.load returns the network (rebuilt from the weights' record) with the weights
    code = (
        "import json, torch\nfrom monai.bundle import load\n"
        f"net = load({BUNDLE_NAME!r}, bundle_dir={str(bundles)!r}, workflow_type='inference', device='cpu')\n"
        "print(json.dumps({'type': type(net).__name__, 'patch': list(net.patch_size),"
        " 'sum': float(sum(p.detach().double().sum() for p in net.parameters()))}))\n"
    )
    res = run([str(fresh_venv), "-c", code], cwd=bundle)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    state = torch.load(tiny_weights, weights_only=True)
    expected = create_network(**TINY)
    expected.load_state_dict(state)
    assert got["type"] == "FINE" and got["patch"] == [2, 2, 2]
    assert got["sum"] == pytest.approx(float(sum(p.double().sum() for p in expected.parameters())), rel=1e-9)
