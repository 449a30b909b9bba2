# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Files that are either complete or absent: atomic writes, an atomic NIfTI writer, up-front output checks, and
checkpoint reads that run no code.

Every file the bundle writes (checkpoints, ``model.pt``, predictions) goes through :func:`atomic_write`: the content
is written to a temporary file in the destination folder, flushed and ``fsync``-ed, then moved over the destination
with :func:`os.replace` (atomic on POSIX and Windows within one file system). A crash at any instant leaves either the
old file or the new one, plus at most a ``.tmp`` file that the next run ignores. A write that fails (a full disk, a
quota, a file-size limit) removes the temporary file and raises :class:`WriteFailedError`, naming the file and the
cause; the previous file is untouched.

:func:`torch_load` reads checkpoints with ``weights_only=True`` (tensors, plain containers and the numpy arrays of
saved RNG states): a file holding any other pickled object is refused with :class:`UnsafeCheckpointError` before
anything in it runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import resource
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import NibabelWriter

__all__ = [
    "TMP_TAG",
    "AtomicNibabelWriter",
    "UnsafeCheckpointError",
    "WriteFailedError",
    "atomic_write",
    "check_output_names",
    "check_writable_dir",
    "take_write_failure",
    "torch_load",
    "torch_save",
]

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WriteFailedError(OSError):
    """A file could not be written (``errno`` kept: ``ENOSPC``, ``EFBIG``, ``EDQUOT``, ...); nothing was replaced."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled Python objects beyond tensors and plain containers; it was not loaded."""


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first ``OSError`` with an errno in ``exc``'s cause/context chain (torch wraps the writer's in its own)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
    return None


def _write_failure(path: Path, tmp: Path, exc: BaseException) -> WriteFailedError | None:
    """A :class:`WriteFailedError` that names ``path`` and the cause of ``exc``, or None if it was no write failure."""
    os_error = _os_error_in(exc)
    code = os_error.errno if os_error is not None else None
    written = tmp.stat().st_size if tmp.exists() else 0
    if code is None:  # a writer that hid the errno (e.g. torch's own file stream): look for the usual causes
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and written >= soft:
            code = errno.EFBIG
        elif shutil.disk_usage(path.parent).free < (1 << 20):
            code = errno.ENOSPC
        else:
            return None
    cause = os.strerror(code)
    if code == errno.EFBIG:
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limit = f"the process's file-size limit is {soft} bytes (ulimit -f)" if soft != resource.RLIM_INFINITY else ""
        cause += f" ({limit or 'the file system refused a larger file'})"
    elif code in _NO_SPACE:
        cause += f" ({shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on the file system of {path.parent})"
    return WriteFailedError(
        code,
        f"could not write {path}: {cause}, after {written} bytes. Nothing was replaced: "
        f"{'the previous ' + path.name + ' is intact' if path.exists() else 'no ' + path.name + ' was left'} and the "
        "temporary file was removed. Free space (or raise the limit) and rerun the same command; a training resumes "
        "from its last complete checkpoint",
        str(path),
    )


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
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private to its writer
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
    except BaseException as e:
        failure = _write_failure(path, tmp, e) if isinstance(e, Exception) else None
        with contextlib.suppress(OSError):
            tmp.unlink()
        if failure is not None:
            raise failure from e
        raise


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a Python file object, so that a failed write keeps its errno (``ENOSPC``, ``EFBIG``)
    in the exception chain; torch's own file stream reports only ``unexpected pos``."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _numpy_globals() -> list[Any]:
    """What numpy arrays and scalars of saved RNG states need to unpickle, under the names of numpy 1.x
    (``numpy.core``) and 2.x (``numpy._core``), so a checkpoint written under one loads under the other."""
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray
    dtypes = {type(np.dtype(t)) for t in (np.uint32, np.int64, np.int32, np.float64, np.float32, np.bool_)}
    names = [(f, f"{module}.{f.__name__}") for f in (multiarray._reconstruct, multiarray.scalar)
             for module in ("numpy.core.multiarray", "numpy._core.multiarray")]  # fmt: skip
    return [np.ndarray, np.dtype, *dtypes, *names]


def torch_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` that also accepts numpy arrays (the RNG states in training checkpoints).

    Raises:
        UnsafeCheckpointError: the file holds another pickled object (a callable, a class instance), which a
            ``weights_only=False`` load would run; the message names the file and the object.
    """
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if not found:  # not a refused object but a damaged or foreign file (e.g. "Unsupported operand"): as it is
            raise
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds a pickled Python object beyond tensors and plain containers "
            f"({found[0]}), which could run code when loaded. monai_fine loads "
            "weights and checkpoints with weights_only=True only; if you made this file yourself and trust it, "
            "load it with torch.load(..., weights_only=False) and save its state_dict again."
        ) from e


_failed_writes = threading.local()


def take_write_failure() -> WriteFailedError | None:
    """The last :class:`WriteFailedError` of :class:`AtomicNibabelWriter` in this thread (cleared by the call).

    MONAI's ``SaveImage`` turns any writer exception into ``RuntimeError: ... cannot find a suitable writer ...
    Please install the writer libraries``; :class:`monai_fine.handlers.CaseErrorReporter` reports this instead.
    """
    failure = getattr(_failed_writes, "last", None)
    _failed_writes.last = None
    return failure


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing through :func:`atomic_write`: a prediction file is complete or absent.

    Use it as ``SaveImaged(..., writer="monai_fine.data.AtomicNibabelWriter")``. A failed write (a full disk) is
    kept for :func:`take_write_failure`.
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        try:
            with atomic_write(filename) as tmp:
                super().write(str(tmp), verbose=False, **obj_kwargs)
        except WriteFailedError as e:
            _failed_writes.last = e
            raise
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
        lines = [f"{s}_{postfix}: " + ", ".join(str(p) for p in paths if _output_stem(p) == s) for s in sorted(clashes)]
        raise ValueError(
            f"{len(clashes)} output name(s) would be written by more than one input (one would overwrite the other); "
            "rename the inputs or segment them in separate runs:\n" + "\n".join(lines)
        )
    return True
