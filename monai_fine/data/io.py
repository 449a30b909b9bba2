# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Files that are either complete or absent: atomic writes, an atomic NIfTI writer, up-front output checks.

Every file the bundle writes (checkpoints, ``model.pt``, predictions) goes through :func:`atomic_write`: the content
is written to a temporary file in the destination folder, flushed and ``fsync``-ed, then moved over the destination
with :func:`os.replace` (atomic on POSIX and Windows within one file system). A crash at any instant leaves either the
old file or the new one, plus at most a ``.tmp`` file that the next run ignores.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import NibabelWriter

__all__ = ["atomic_write", "AtomicNibabelWriter", "check_writable_dir", "check_output_names", "TMP_TAG"]

TMP_TAG = ".tmp-"
PAUSE_ENV = "MONAI_FINE_PAUSE_BEFORE_REPLACE"
PAUSE_MATCH_ENV = "MONAI_FINE_PAUSE_MATCH"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync-ed and moved over ``path`` atomically.

    The temporary name keeps the suffixes of ``path`` (``x.nii.gz`` -> ``.x.tmp-<random>.nii.gz``) so writers that
    pick the format from the extension still work. On an exception the temporary file is removed and ``path`` is left
    as it was.

    Test hook: with the environment variable ``MONAI_FINE_PAUSE_BEFORE_REPLACE=<seconds>`` the writer sleeps between
    the complete temporary write and the rename, and prints ``PAUSE <path>`` first, so a test can kill the process
    while a checkpoint is being written; ``MONAI_FINE_PAUSE_MATCH=<text>`` limits the pause to paths containing
    ``<text>``.

    Args:
        path: the destination file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if path.suffixes else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}{TMP_TAG}", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        if pause > 0 and os.environ.get(PAUSE_MATCH_ENV, "") in str(path):
            print(f"PAUSE {path}", flush=True)
            time.sleep(pause)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing through :func:`atomic_write`: a prediction file is complete or absent.

    Use it as ``SaveImaged(..., writer="monai_fine.data.AtomicNibabelWriter")``.
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        with atomic_write(filename) as tmp:
            super().write(str(tmp), verbose=False, **obj_kwargs)
        if verbose:
            print(f"writing: {filename}")


def check_writable_dir(folder: str | os.PathLike, what: str = "output_dir") -> bool:
    """Create ``folder`` if needed and check that a file can be written in it (before any expensive work).

    Raises:
        PermissionError: naming ``what`` and ``folder`` when it cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"{what} is not writable: {folder} ({type(e).__name__}: {e})") from e
    return True


def _output_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    if Path(path).is_dir():  # a DICOM series folder: named after the whole folder name (series_name_formatter)
        return name
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def check_output_names(items: Sequence[Any], image_key: str = "image", postfix: str = "seg") -> bool:
    """Refuse inputs that would be written to the same output file (``SaveImaged`` with ``separate_folder=False``).

    Two inputs ``a/case.nii.gz`` and ``b/case.nii.gz`` both become ``case_<postfix>.nii.gz``; rather than let one
    silently overwrite the other, the run stops before the model is loaded.

    Raises:
        ValueError: listing every clashing output name and the inputs that map to it.
    """
    paths = [item[image_key] if isinstance(item, Mapping) else item for item in items]
    stems = Counter(_output_stem(p) for p in paths)
    clashes = {s for s, n in stems.items() if n > 1}
    if clashes:
        lines = [
            f"{s}_{postfix}: " + ", ".join(str(p) for p in paths if _output_stem(p) == s) for s in sorted(clashes)
        ]
        raise ValueError(
            f"{len(clashes)} output name(s) would be written by more than one input (one would overwrite the other); "
            "rename the inputs or segment them in separate runs:\n" + "\n".join(lines)
        )
    return True
