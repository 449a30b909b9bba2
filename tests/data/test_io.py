# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Atomic writes, output-name and output-folder checks, boolean tunables, datalist and header-size errors."""

from __future__ import annotations

import json
import pickle
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_fine.data import (
    AtomicNibabelWriter,
    atomic_write,
    check_datalist,
    check_images,
    check_nonempty,
    check_output_names,
    check_writable_dir,
    load_datalist,
)


def test_atomic_write_replaces_only_when_complete(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_bytes(b"half a checkp")
        raise RuntimeError("killed while writing")
    assert torch.equal(torch.load(path)["w"], torch.ones(3))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # and no temporary file is left
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.endswith(".pt") and tmp != path
        torch.save({"w": torch.zeros(3)}, tmp)
        assert torch.equal(torch.load(path)["w"], torch.ones(3))  # not replaced before the block ends
    assert torch.equal(torch.load(path)["w"], torch.zeros(3))


def test_atomic_nifti_writer_keeps_the_extension_and_the_data(tmp_path):
    writer = AtomicNibabelWriter(output_dtype=np.uint8)
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    writer.set_data_array(torch.as_tensor(data), channel_dim=None)
    writer.set_metadata({"affine": np.diag([2.0, 2.0, 3.0, 1.0])}, resample=False)
    writer.write(tmp_path / "case_seg.nii.gz")
    img = nib.load(tmp_path / "case_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"]
    with open(tmp_path / "case_seg.nii.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip, chosen from the final extension


def test_outputs_are_readable_by_others_as_the_umask_allows(tmp_path):
    import os

    with atomic_write(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "model.pt").stat().st_mode & 0o777 == 0o666 & ~mask


_FULL_DISK_WRITER = """
import resource, sys
import numpy as np, torch
from monai_fine.data import torch_save
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # writes beyond 20 kB fail with EFBIG, as on a full disk
what, out = sys.argv[1], sys.argv[2]
try:
    if what == "prediction":
        from monai_fine.data import AtomicNibabelWriter
        writer = AtomicNibabelWriter(output_dtype=np.uint8)
        labels = torch.randint(0, 14, (64, 64, 32), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
        writer.set_data_array(labels, channel_dim=None)
        writer.set_metadata({"affine": np.eye(4)}, resample=False)
        writer.write(out + "/case_seg.nii.gz")
    else:
        from monai_fine.data import atomic_write
        with atomic_write(out + "/model.pt") as tmp:
            torch_save({"w": torch.randn(100000)}, tmp)
except OSError as e:
    print(type(e).__name__, e.errno, e)
"""


@pytest.mark.parametrize("what, name", [("prediction", "case_seg.nii.gz"), ("weights", "model.pt")])
def test_a_failed_write_names_the_file_and_the_cause_and_keeps_the_old_file(tmp_path, what, name):
    import errno
    import subprocess
    import sys

    old = tmp_path / name
    old.write_bytes(b"the previous, complete file")
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_WRITER, what, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(f"WriteFailedError {errno.EFBIG} "), proc.stdout + proc.stderr[-2000:]
    assert f"could not write {old}: File too large" in line and "file-size limit is 20000 bytes" in line
    assert f"the previous {name} is intact" in line
    assert old.read_bytes() == b"the previous, complete file"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no partial or temporary file


def test_a_checkpoint_holding_a_pickled_callable_is_refused_before_it_runs(tmp_path):
    from monai_fine.bundle_tools import read_network_config
    from monai_fine.data import UnsafeCheckpointError, torch_load

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create the marker file when unpickled

    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload()}, path)
    for load in (torch_load, read_network_config):
        with pytest.raises(UnsafeCheckpointError, match=rf"refused to load {path}: it holds a pickled Python object"):
            load(path)
    assert not marker.exists()
    # a damaged file is not "unsafe": it keeps torch's error, so a resume sets it aside and falls back
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError) as err:
        torch_load(tmp_path / "bad.pt")
    assert not isinstance(err.value, UnsafeCheckpointError)
    # training checkpoints hold numpy RNG states: those load
    state = {"rng": np.random.get_state(), "best": np.float64(0.5), "w": torch.ones(2)}
    torch.save(state, tmp_path / "ok.pt")
    assert torch_load(tmp_path / "ok.pt")["rng"][0] == "MT19937"


def test_output_name_clashes_are_listed(tmp_path):
    items = [tmp_path / "a" / "case1.nii.gz", tmp_path / "b" / "case1.nii.gz", tmp_path / "case2.nii.gz"]
    with pytest.raises(ValueError) as err:
        check_output_names(items, postfix="seg")
    text = str(err.value)
    assert "case1_seg" in text and str(items[0]) in text and str(items[1]) in text and "case2" not in text
    assert check_output_names(items[1:]) is True


def test_writable_dir(tmp_path):
    assert check_writable_dir(tmp_path / "new" / "out") and (tmp_path / "new" / "out").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=r"output_dir is not writable: .*a_file"):
        check_writable_dir(blocker / "out")


def test_datalist_json_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "dataset_0.json"
    path.write_text('{"training": [{"image": "a.nii.gz", "label": "b.nii.gz"},]}')
    with pytest.raises(ValueError, match=r"dataset_0\.json: not valid JSON: .* line 1, column"):
        load_datalist(path, "training")
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}))
    assert load_datalist(path, "training")[0]["image"] == str(tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"dataset_0\.json"):
        load_datalist(path, "validation")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_datalist(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"'validation' list of .*dataset_0\.json is empty"):
        check_nonempty([], "validation", path)


def test_huge_header_is_refused_without_reading(tmp_path):
    """A header declaring 2048^3 int16 voxels (16 GiB) over a few bytes of data: refused from the header alone."""
    path = tmp_path / "huge.nii"
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((2048, 2048, 2048))
    header.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * (int(header.get_data_offset()) - f.tell() + 64))
    tracemalloc.start()
    with pytest.raises(ValueError) as err:
        check_images([path])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    text = str(err.value)
    assert "huge.nii" in text and "2048 x 2048 x 2048" in text and str(2048**3) in text and "max_image_voxels" in text
    assert peak < 64 * 2**20  # nothing near 16 GiB was allocated
    with pytest.raises(ValueError, match="above the limit max_image_voxels=1000"):
        check_datalist([{"image": str(path)}], label_key="none", max_image_voxels=1000)
