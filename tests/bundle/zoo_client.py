# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What runs against a downloaded Model Zoo bundle from a folder of the user's own (used by ``test_zoo.py``).

    python -I zoo_client.py BUNDLES load                      # monai.bundle.load(<name>, bundle_dir=BUNDLES)
    python -I zoo_client.py BUNDLES cli run --config_file ...  # = python -m monai.bundle run --config_file ...
    python -I zoo_client.py BUNDLES zoo_verify                 # the Zoo CI's verify_net_in_out and ckpt_export

``BUNDLES`` is the folder the bundle was downloaded into (``BUNDLES/fine_btcv_segmentation``). Before anything else
a finder placed first in ``sys.meta_path`` lets ``import monai_fine`` find the package only in ``sys.path`` entries
under ``BUNDLES``: a ``monai_fine`` installed in this python (the repository's editable install) cannot stand in for
the bundle's copy, as in a venv holding only the bundle's declared packages. Prints one JSON line last.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys

BUNDLE_NAME = "fine_btcv_segmentation"


def _under(entry: str, root: str) -> bool:
    path = os.path.realpath(os.path.abspath(entry or "."))
    return path == root or path.startswith(root + os.sep)


class BundleOnlyFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level ``monai_fine`` only below ``root`` (its submodules then come from that copy)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "monai_fine":
            return None
        entries = [p for p in sys.path if _under(p, self.root)]
        spec = importlib.machinery.PathFinder.find_spec(fullname, entries) if entries else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named 'monai_fine' below {self.root}", name=fullname)
        return spec


def _importable() -> bool:
    try:
        import monai_fine  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def _where() -> str | None:
    module = sys.modules.get("monai_fine")
    return None if module is None else os.path.realpath(module.__file__)


def main(argv: list[str]) -> dict:
    bundles, mode, rest = os.path.abspath(argv[0]), argv[1], argv[2:]
    sys.meta_path.insert(0, BundleOnlyFinder(bundles))
    report: dict = {"importable_before": _importable(), "cwd": os.getcwd()}
    if mode == "load":
        from monai.bundle import load

        net = load(BUNDLE_NAME, bundle_dir=bundles, workflow_type="inference", device="cpu")
        report.update(type=type(net).__name__, patch=list(net.patch_size),
                      sum=float(sum(p.detach().double().sum() for p in net.parameters())))  # fmt: skip
    elif mode == "cli":
        sys.argv = ["python -m monai.bundle", *rest]
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    elif mode == "zoo_verify":
        report.update(zoo_verify(os.path.join(bundles, BUNDLE_NAME), json.loads(rest[0])))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    report["monai_fine"] = _where()
    return report


def zoo_verify(bundle: str, input_shape: list[int]) -> dict:
    """The Zoo's ``verify_bundle.py`` steps that run code, as its CI calls them (``bundle_root`` given, the bundle
    folder first on ``sys.path``): ``verify_net_in_out``; ``ckpt_export`` scripted (what the Zoo runs); and the
    traced export this bundle supports instead, loaded back and compared with the eager network."""
    import torch
    from monai.bundle import ckpt_export, verify_net_in_out

    sys.path.insert(0, bundle)
    common = {
        "net_id": "network_def",
        "meta_file": os.path.join(bundle, "configs", "metadata.json"),
        "config_file": os.path.join(bundle, "configs", "inference.json"),
        "bundle_root": bundle,
    }
    verify_net_in_out(**common)
    out: dict = {"verify_net_in_out": "passed"}
    models = os.path.join(bundle, "models")
    try:
        ckpt_export(
            filepath=os.path.join(models, "verify_model.ts"), ckpt_file=os.path.join(models, "model.pt"), **common
        )
        out["script"] = "exported"
    except Exception as e:
        out["script"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    traced = os.path.join(models, "model.ts")
    ckpt_export(filepath=traced, ckpt_file=os.path.join(models, "model.pt"), use_trace=True, input_shape=input_shape,
                **common)  # fmt: skip
    from monai_fine.bundle_tools import load_network

    eager = load_network(os.path.join(models, "model.pt"))
    ts = torch.jit.load(traced)
    torch.manual_seed(0)
    x = torch.rand(input_shape)
    with torch.no_grad():
        a, b = ts(x), eager(x)
    out.update(
        trace_max_abs_diff=float((a - b).abs().max()), trace_argmax_equal=bool(torch.equal(a.argmax(1), b.argmax(1)))
    )
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
