# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The optional dependencies (extras of ``pyproject.toml``), imported where they are used, with an error that says
which extra installs them.

The network and the bundle need only the hard dependencies; pictures, TensorBoard curves, DICOM input, experiment
tracking, ONNX export and the largest-component post-processing each come with an extra (``pip install
'monai_fine[matplotlib]'``, ``[all]`` for all).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

#: top-level module -> the extra of ``pyproject.toml`` that installs it
EXTRAS = {
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
    "tqdm": "tqdm",
    "pydicom": "dicom",
    "mlflow": "tracking",
    "onnx": "export",
    "onnxruntime": "export",
    "skimage": "postprocessing",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib.pyplot"``), or fail naming what needs it and the extra to install.

    Args:
        module: the module to import; its top-level package must be a key of :data:`EXTRAS`.
        purpose: what needs it, for the message (e.g. ``"the demo's overlay picture"``).

    Raises:
        ImportError: ``<purpose> needs <package>, which is not installed: pip install 'monai_fine[<extra>]'``.
    """
    top = module.split(".")[0]
    if top not in EXTRAS:
        raise ValueError(f"{top!r} is not an optional dependency of monai_fine; optional are {sorted(EXTRAS)}.")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs {top}, which is not installed: pip install 'monai_fine[{EXTRAS[top]}]' ({e})."
        ) from e
