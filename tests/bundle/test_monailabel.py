# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The bundle in MONAI Label: what its ``monaibundle`` app does to our configs, then a real MONAI Label server.

The fast tests replay, without MONAI Label, the exact steps of ``monailabel.tasks.infer.bundle.BundleInferTask`` that
broke (an ``image_path`` string in the data, ``network_def`` instantiated with no overrides, ``displayable_configs``
written back into the config). The slow test starts MONAI Label 0.8.5 on 127.0.0.1 with the Zoo zip of this bundle
in a copy of the ``monaibundle`` sample app and calls ``/info/``, ``/infer`` (a NIfTI file, then the same CT as a
DICOM series folder) and ``/train`` twice. It needs a Python with ``monailabel`` installed (its own venv, see
bundle/docs/README.md): ``$MONAI_FINE_MONAILABEL_PYTHON``, or the ``python`` beside a ``monailabel`` found on
``PATH``; it is skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_fine.bundle_tools import BUNDLE_NAME, CONFIG_BUFFER, create_network, load_network, package_bundle
from monai_fine.data import make_phantom_dataset

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CONFIGS = BUNDLE / "configs"
TINY = {"preset": "test", "roi_size": [32, 32, 16]}


def _parser(config: str, bundle_root: Path) -> ConfigParser:
    """What MONAI Label does: read the config, overwrite bundle_root, nothing else."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.config.update({"bundle_root": str(bundle_root), "device": "cpu"})
    return parser


def _tiny_weights(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(create_network(**{**TINY, **kw}).state_dict(), path)
    return path


def test_network_rebuilt_from_recorded_weights(tmp_path):
    """MONAI Label instantiates ``network_def`` with no overrides; tiny weights must still load, strictly."""
    weights = _tiny_weights(tmp_path / "models" / "model.pt", memory="window")
    for config in ["inference.json", "train.json"]:
        parser = _parser(config, tmp_path)
        net = parser.get_parsed_content("network_def")
        state = torch.load(weights, weights_only=True)
        net.load_state_dict(state)  # strict: same architecture as recorded
        assert net.memory == "window"
        assert parser.get_parsed_content("preset") == "test" and list(parser.get_parsed_content("roi_size")) == [
            32,
            32,
            16,
        ]
        # the recorded config travels on in the weights a training run writes
        assert torch.equal(net.state_dict()[CONFIG_BUFFER], state[CONFIG_BUFFER])
    # no weights: the config decides (default preset bcv is too large to build here; test by override)
    parser = _parser("inference.json", tmp_path / "empty")
    parser.config.update({"preset": "test"})
    assert parser.get_parsed_content("network_def").memory == "full"
    # runtime arguments follow the config, the architecture follows the weights
    net = load_network(weights, use_checkpoint=True)
    assert net.memory == "window" and sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in create_network(**TINY, memory="window").parameters()
    )


def test_weights_without_record_keep_loading_strictly(tmp_path):
    from monai_fine.networks import create_fine

    plain = create_fine("test", 1, 14, deep_supervision=True)
    (tmp_path / "models").mkdir()
    torch.save(plain.state_dict(), tmp_path / "models" / "model.pt")
    parser = _parser("inference.json", tmp_path)
    for k, v in {"preset": "test"}.items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    assert CONFIG_BUFFER not in net.state_dict()
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))


def _options(inferer) -> tuple:
    kw = getattr(inferer, "sw_kwargs", None) or vars(inferer)  # FINEInferer today / as a SlidingWindowInferer
    return kw["overlap"], kw["sw_batch_size"], inferer.scan_memory


def test_displayable_configs_reach_the_inferer(tmp_path):
    """MONAI Label writes the user's options into ``displayable_configs`` and re-parses (BundleInferTask)."""
    _tiny_weights(tmp_path / "models" / "model.pt")
    parser = _parser("inference.json", tmp_path)
    shown = parser.get_parsed_content("displayable_configs", instantiate=True)
    assert shown == {"sw_overlap": 0.5, "sw_batch_size": 2, "scan_memory": False}
    inferer = parser.get_parsed_content("inferer")
    assert _options(inferer) == (0.5, 2, False)
    parser["displayable_configs"].update({"sw_overlap": 0.25, "sw_batch_size": 3, "scan_memory": True})
    parser.parse()
    inferer = parser.get_parsed_content("inferer")
    assert _options(inferer) == (0.25, 3, True)


def test_train_config_follows_monailabel_max_epochs(tmp_path):
    """MONAI Label overrides ``train#trainer#max_epochs`` only: the schedule, validation and workers must follow."""
    parser = _parser("train.json", tmp_path)
    parser["train#trainer#max_epochs"] = 2
    assert parser.get_parsed_content("val_interval") == 2  # validates (writes model.pt) at the last epoch
    assert parser.get_parsed_content("num_workers") <= (os.cpu_count() or 1)
    for k, v in {"preset": "test"}.items():
        parser[k] = v
    assert parser.get_parsed_content("lr_scheduler").total_iters == 2


# ----------------------------------------------------------------------------------------------------------------
# a real MONAI Label server


def _monailabel_python() -> str | None:
    exe = os.environ.get("MONAI_FINE_MONAILABEL_PYTHON")
    if exe:
        return exe
    ml = shutil.which("monailabel")
    if ml:
        py = Path(ml).parent / "python"
        return str(py) if py.exists() else None
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, body: dict, timeout: float = 600) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def _post_form(url: str, params: dict, timeout: float = 600) -> bytes:
    """multipart/form-data with one ``params`` field (how /infer takes the user's options)."""
    boundary = "monaifineboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


@contextlib.contextmanager
def _server(
    tmp_path: Path,
    totalseg_dir: Path,
    extra_env: dict | None = None,
    extra_images: dict | None = None,
    weights: Path | None = None,
):
    """A real MONAI Label server on 127.0.0.1 with the Zoo zip of this bundle (tiny random weights) in a copy of the
    ``monaibundle`` sample app, a datastore of 4 phantom cases with labels and the example CT; yields
    ``(base_url, process, log_path, bundle_dir)`` once ``/info/`` answers, and stops the server after.
    ``extra_images``: ``{name: nibabel image}`` added to the datastore; ``weights``: the bundle's ``model.pt``
    (default: tiny FINE ``full`` weights)."""
    python = _monailabel_python()
    if python is None:
        pytest.skip("MONAI Label not found: set MONAI_FINE_MONAILABEL_PYTHON to a python with monailabel installed")
    sample = subprocess.run(
        [python, "-c", "import os, sys; print(os.path.join(sys.prefix, 'monailabel', 'sample-apps', 'monaibundle'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not os.path.isdir(sample):
        pytest.skip(f"monaibundle sample app not found at {sample}")

    # the app with our bundle, as downloaded from the Zoo (code inside, no monai_fine install in MONAI Label's venv)
    app = tmp_path / "monaibundle"
    shutil.copytree(sample, app, ignore=shutil.ignore_patterns("__pycache__"))
    weights = weights or _tiny_weights(tmp_path / "w" / "model.pt", memory="full")
    with zipfile.ZipFile(package_bundle(tmp_path / "zip", weights=weights)) as zf:
        zf.extractall(app / "model")
    bundle = app / "model" / BUNDLE_NAME
    assert (bundle / "models" / "model.pt").is_file()

    # datastore: 4 phantom cases with final labels + the real example CT (no label)
    phantom = tmp_path / "phantom"
    make_phantom_dataset(
        phantom, num_cases=4, seed=1, shape=(48, 48, 16), spacing=(1.52, 1.52, 3.0), num_test=0, val_fraction=0.25
    )
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for img in sorted((phantom / "imagesTr").glob("*.nii.gz")):
        shutil.copy(img, studies / img.name)
        shutil.copy(phantom / "labelsTr" / img.name, studies / "labels" / "final" / img.name)
    shutil.copy(totalseg_dir / "example_ct_sm.nii.gz", studies / "example_ct_sm.nii.gz")
    for name, img in (extra_images or {}).items():
        nib.save(img, str(studies / f"{name}.nii.gz"))

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
            "MONAI_ZOO_SOURCE": "github",
            "MONAI_LABEL_TRACKING_ENABLED": "false",
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
            **(extra_env or {}),
        }
    )
    log = tmp_path / "server.log"
    cmd = [
        python,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(studies),
        "--conf",
        "models",
        BUNDLE_NAME,
        "--conf",
        "zoo_source",
        "github",
        "--conf",
        "sam2",
        "false",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        for _ in range(180):
            assert proc.poll() is None, log.read_text()[-4000:]
            try:
                _get(f"{base}/info/", timeout=5)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("MONAI Label did not answer /info/ in 180 s:\n" + log.read_text()[-4000:])
        yield base, proc, log, bundle
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_monailabel_server_infer_and_train(tmp_path, totalseg_dir):
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    with _server(tmp_path, totalseg_dir) as (base, _, log, bundle):
        info = _get(f"{base}/info/", timeout=30)
        model = info["models"][BUNDLE_NAME]
        assert model["labels"]["spleen"] == 1 and len(model["labels"]) == 13
        assert info["trainers"][BUNDLE_NAME]

        # /infer on the real CT: a label map on the input's grid; the user's options are taken
        seg = _post_form(
            f"{base}/infer/{BUNDLE_NAME}?image=example_ct_sm&output=image",
            {"device": "cpu", "sw_overlap": 0.0, "sw_batch_size": 4},
        )
        (tmp_path / "seg.nii.gz").write_bytes(seg)
        pred, ref = nib.load(str(tmp_path / "seg.nii.gz")), nib.load(str(ct))
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-4)
        labels = np.unique(np.asarray(pred.dataobj))
        assert set(labels.tolist()) <= set(range(14)), labels
        assert "'overlap': 0.0, " in log.read_text()  # the user's option reached the inferer MONAI Label logs

        # /infer on the same CT as a DICOM series folder, given by its path on the server (MONAI Label passes an
        # existing path through; a DICOMweb datastore with MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI=false does the same
        # with its downloaded series folder): the same labels, on the series' own grid
        from dicom_series import dicom_grid, write_series

        series = tmp_path / "dicom" / "ct_series"
        write_series(series, np.asarray(ref.dataobj), ref.affine)
        # a folder has no file extension to copy, so MONAI Label's writer needs result_extension to write a file
        seg = _post_form(
            f"{base}/infer/{BUNDLE_NAME}?image={urllib.parse.quote(str(series))}&output=image",
            {"device": "cpu", "sw_overlap": 0.0, "sw_batch_size": 4, "result_extension": ".nii.gz"},
        )
        (tmp_path / "seg_dicom.nii.gz").write_bytes(seg)
        from_dicom = nib.load(str(tmp_path / "seg_dicom.nii.gz"))
        expected, expected_affine = dicom_grid(np.asarray(pred.dataobj), pred.affine)
        assert from_dicom.shape == expected.shape, log.read_text()[-4000:]
        np.testing.assert_allclose(from_dicom.affine, expected_affine, atol=1e-3)
        assert np.array_equal(np.asarray(from_dicom.dataobj), expected)
        assert "Input is a Directory; Consider it as DICOM" in log.read_text()

        # /train twice: each writes a usable model.pt, the second starts from the first's weights
        states = []
        for round_ in range(2):
            before = (bundle / "models" / "model.pt").stat().st_mtime
            _post(
                f"{base}/train/{BUNDLE_NAME}?run_sync=true",
                {
                    "device": "cpu",
                    "max_epochs": 1,
                    "val_split": 0.5,
                    "multi_gpu": False,
                    "pretrained": True,
                    "tracking": "None",
                },
            )
            assert log.read_text().count("Training Finished") == round_ + 1, log.read_text()[-4000:]
            assert (bundle / "models" / "model.pt").stat().st_mtime > before, log.read_text()[-4000:]
            net = load_network(bundle / "models" / "model.pt")
            assert net.memory == "full" and net.patch_size == (2, 2, 2)
            states.append({k: v.clone() for k, v in net.state_dict().items()})
        text = log.read_text()
        assert "Add Checkpoint Loader for Path" in text
        assert text.count("Epoch: 1/1, Iter: 2/2") == 2  # both calls trained (the finished first run is not resumed)
        assert text.count("Restored all variables from " + str(bundle / "models" / "model.pt")) == 2
        # same seed, same data: only different starting weights change the first loss of the second call
        first = re.findall(r"Epoch: 1/1, Iter: 1/2 -- train_loss: ([0-9.]+)", text)
        assert len(first) == 2 and first[0] != first[1], first
        assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0] if k != CONFIG_BUFFER)


@pytest.mark.slow
def test_monailabel_serves_a_peer_from_its_recorded_weights(tmp_path, totalseg_dir):
    """A peer's weights (DynUNet, ``arch`` recorded) in the unmodified bundle: MONAI Label, which passes no overrides,
    serves the peer, and its label map is the one the bundle's own ``inference.json`` writes for the same CT (up to
    the rounding of near-tied logits of random weights)."""
    from monai_fine.bundle_tools import read_network_config, run_bundle

    torch.manual_seed(0)
    weights = _tiny_weights(
        tmp_path / "w" / "model.pt", arch="dynunet", spacing=[3.0, 3.0, 3.0], base_features=8, max_features=32
    )
    with _server(tmp_path, totalseg_dir, weights=weights) as (base, _, log, bundle):
        assert read_network_config(bundle / "models" / "model.pt")["arch"] == "dynunet"
        assert _get(f"{base}/info/", timeout=30)["models"][BUNDLE_NAME]["labels"]["spleen"] == 1
        seg = _post_form(
            f"{base}/infer/{BUNDLE_NAME}?image=example_ct_sm&output=image",
            {"device": "cpu", "sw_overlap": 0.0, "sw_batch_size": 4},
        )
    served, served_affine = _decode(seg, tmp_path, "served")
    local_in = tmp_path / "local_in" / "imagesTs"
    local_in.mkdir(parents=True)
    shutil.copy(totalseg_dir / "example_ct_sm.nii.gz", local_in / "example_ct_sm.nii.gz")
    run_bundle(
        ["inference.json"], "infer", bundle_root=str(bundle), dataset_dir=str(local_in.parent),
        output_dir=str(tmp_path / "local_out"), device="$torch.device('cpu')", overlap=0.0, sw_batch_size=4,
    )  # fmt: skip
    (local,) = (tmp_path / "local_out").rglob("*.nii.gz")
    local = nib.load(str(local))
    assert served.shape == local.shape and np.allclose(served_affine, local.affine, atol=1e-4), log.read_text()[-4000:]
    served, local = served.astype(np.int64), np.asarray(local.dataobj).astype(np.int64)
    # random weights leave near-ties between the logits everywhere, which the server (1 thread) and this process (its
    # own thread count) can round apart: 0.27 % of the voxels on 2026-12-03; another network would agree on ~1/14
    assert (served != local).mean() < 0.01, ((served != local).mean(), log.read_text()[-4000:])
    assert len(np.unique(served)) > 1  # random weights still give more than one label


def _decode(seg: bytes, folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / f"{name}.nii.gz"
    path.write_bytes(seg)
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _rss(pid: int) -> int:
    """Resident memory of the server process and its children, in bytes."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.slow
def test_monailabel_server_under_repeated_and_concurrent_infer(tmp_path, totalseg_dir):
    """30 sequential and 4 x 4 concurrent ``/infer`` calls (every click in a viewer): all answer 200 with the first
    answer's label map, the server's memory after the 30th is within 10 % of after the 3rd, and nothing is left in
    its temporary folder. On the middle third of the example CT (in-plane), to keep the run in minutes on 2 cores.
    Bounded: 46 requests, each with a 120 s timeout, the whole loop within 20 minutes."""
    from concurrent.futures import ThreadPoolExecutor

    temp = tmp_path / "server_tmp"  # the server's TMPDIR: MONAI Label writes each result there first
    temp.mkdir()
    # the middle of the example CT, a third of its width and height (all its slices): ~4 s a request, not ~40 s
    ct = nib.load(str(totalseg_dir / "example_ct_sm.nii.gz"))
    nx, ny = ct.shape[0] // 3, ct.shape[1] // 3
    middle = ct.slicer[nx : 2 * nx, ny : 2 * ny, :]
    url_of = "{}/infer/" + BUNDLE_NAME + "?image=example_ct_middle&output=image"
    params = {"device": "cpu", "sw_overlap": 0.25, "sw_batch_size": 4}
    deadline = time.monotonic() + 1200
    with _server(tmp_path, totalseg_dir, {"TMPDIR": str(temp)}, {"example_ct_middle": middle}) as (base, proc, log, _):
        url = url_of.format(base)
        temp_before = _files(temp)
        first, rss = None, {}
        for i in range(1, 31):
            assert time.monotonic() < deadline, f"request loop over its time bound at request {i}"
            labels, affine = _decode(
                _post_form(url, params, timeout=120), tmp_path, f"seq{i}"
            )  # urllib raises on != 200
            if first is None:
                first = (labels, affine)
                assert len(np.unique(labels)) > 1  # a real label map, not all background
            assert np.array_equal(labels, first[0]) and np.allclose(affine, first[1]), f"request {i} differs"
            if i in (3, 30):
                rss[i] = _rss(proc.pid)

        def client(k: int) -> list[np.ndarray]:
            out = []
            for j in range(4):
                assert time.monotonic() < deadline, "request loop over its time bound"
                out.append(_decode(_post_form(url, params, timeout=120), tmp_path, f"con{k}_{j}")[0])
            return out

        with ThreadPoolExecutor(4) as pool:
            answers = [a for chunk in pool.map(client, range(4)) for a in chunk]
        assert len(answers) == 16 and all(np.array_equal(a, first[0]) for a in answers)
        assert proc.poll() is None, log.read_text()[-4000:]
        assert abs(rss[30] - rss[3]) <= 0.10 * rss[3], (rss, log.read_text()[-2000:])
        assert _files(temp) == temp_before, sorted(_files(temp) - temp_before)[:20]
        print(f"server RSS after request 3: {rss[3] / 2**20:.0f} MiB, after 30: {rss[30] / 2**20:.0f} MiB")
