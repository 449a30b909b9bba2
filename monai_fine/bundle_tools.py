# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The glue between the package and its MONAI bundle, and what the bundle needs to work in the tools MONAI users
run (MONAI Label and the Model Zoo).

* :func:`bundle_dir`, :func:`run_bundle`: the bundle folder, and its configs run as a MONAI ``ConfigWorkflow`` with id
  overrides; :func:`train`, :func:`evaluate`, :func:`infer` and :func:`verify` are the package CLI's bundle commands.
* :func:`create_network`: the bundle's ``network_def``. It records the network arguments in the weights (a ``uint8``
  buffer ``network_config`` holding JSON, so it travels in every ``state_dict``/``model.pt``) and, given an existing
  checkpoint, rebuilds the architecture recorded there. MONAI Label instantiates ``network_def`` without overrides and
  loads ``model.pt`` with ``strict=False``: with this, any preset's weights load.
* :func:`package_bundle`: the Model Zoo zip ``<name>_v<version>.zip`` with the ``monai_fine`` code inside, so that a
  downloaded bundle runs with only its ``required_packages_version`` installed.
* :func:`rebind_config_modules`: the second half of the configs' ``bundle_code`` step, which makes that shipped copy
  importable from any working folder (``monai.bundle.load``, ``python -m monai.bundle run`` from elsewhere).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from monai_fine.data.io import UnsafeCheckpointError, torch_load

__all__ = [
    "bundle_dir",
    "bundle_workflow",
    "run_bundle",
    "train",
    "evaluate",
    "infer",
    "verify",
    "BUNDLE_NAME",
    "CONFIG_BUFFER",
    "RUNTIME_ARGS",
    "CONFLICT_ARGS",
    "check_roi_size",
    "keep_largest_component_enabled",
    "create_network",
    "read_network_config",
    "load_network",
    "package_bundle",
    "rebind_config_modules",
]

logger = logging.getLogger(__name__)

BUNDLE_NAME = "fine_btcv_segmentation"
"""Folder name of the bundle in the Model Zoo, in MONAI Label's ``model/`` folder and in the zip."""

CONFIG_BUFFER = "network_config"
"""Name of the buffer that records the network arguments (JSON as ``uint8``) in the weights."""

RUNTIME_ARGS = ("use_checkpoint", "use_flash_attention", "roi_size", "drop_path_rate")
"""Arguments that do not change the parameters: taken from the caller, not from the recorded config."""


def bundle_dir() -> Path:
    """The MONAI bundle folder: ``$MONAI_FINE_BUNDLE`` or ``bundle/`` beside the package."""
    path = Path(os.environ.get("MONAI_FINE_BUNDLE", Path(__file__).resolve().parents[1] / "bundle"))
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"MONAI bundle not found at {path} (set MONAI_FINE_BUNDLE to the bundle folder).")
    return path


def bundle_workflow(configs: list[str], workflow_type: str, **override: Any) -> Any:
    """``configs`` (file names in ``bundle/configs``) as an initialised MONAI ``ConfigWorkflow`` with id overrides
    (``bundle_root`` defaults to the bundle folder)."""
    from monai.bundle import ConfigWorkflow

    cfg = bundle_dir() / "configs"
    override.setdefault("bundle_root", str(bundle_dir()))
    workflow = ConfigWorkflow(
        config_file=[str(cfg / c) for c in configs],
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )
    workflow.initialize()
    return workflow


def run_bundle(configs: list[str], workflow_type: str, **override: Any) -> Any:
    """Run ``configs`` (file names in ``bundle/configs``) as a MONAI ``ConfigWorkflow`` with id overrides."""
    workflow = bundle_workflow(configs, workflow_type, **override)
    out = workflow.run()
    workflow.finalize()
    return out


def train(**override: Any) -> None:
    """Train with ``bundle/configs/train.json``; e.g. ``--dataset_dir /data/btcv --preset bcv``."""
    run_bundle(["train.json"], "train", **override)


def evaluate(**override: Any) -> None:
    """Evaluate ``models/model.pt`` (per-case, per-organ Dice and HD95 in mm, CSVs in ``output_dir``)."""
    run_bundle(["train.json", "evaluate.json"], "eval", **override)


def infer(**override: Any) -> None:
    """Segment every ``dataset_dir/imagesTs/*.nii.gz`` and DICOM series folder into ``output_dir`` (input grid and
    affine); see :py:mod:`monai_fine.data.dicom` for the DICOM layout."""
    run_bundle(["inference.json"], "infer", **override)


def verify(**override: Any) -> str:
    """``monai.bundle verify_net_in_out`` on the inference config (network input/output against the metadata)."""
    from monai.bundle import verify_net_in_out

    cfg = bundle_dir() / "configs"
    verify_net_in_out(
        net_id="network_def", meta_file=str(cfg / "metadata.json"), config_file=str(cfg / "inference.json"), **override
    )
    return "verify_net_in_out: passed"


def _encode(config: Mapping[str, Any]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(config, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def _plain(value: Any) -> Any:
    """JSON-able copy of a network argument (tuples and tensors to lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime: float) -> dict[str, Any]:
    try:
        ckpt = torch_load(path, mmap=True)
    except UnsafeCheckpointError:  # refused, not unreadable: the user must decide about this file
        raise
    except Exception as e:  # not a torch checkpoint (or a truncated one): the weight loader reports it with its name
        warnings.warn(
            f"cannot read the network record of {path} ({type(e).__name__}: {e}); using the config's network.",
            stacklevel=2,
        )
        return {}
    state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else {}
    record = state.get(CONFIG_BUFFER) if isinstance(state, Mapping) else None
    if record is None:
        return {}
    return json.loads(bytes(record.tolist()).decode("utf-8"))


def read_network_config(checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """The network arguments recorded in ``checkpoint`` (a bare state dict or ``{"model": state_dict}``).

    Returns ``{}`` when ``checkpoint`` is None, does not exist, is not a readable torch checkpoint (with a warning; the
    weight loader then names the file in its error), or has no record (weights saved before the record existed, or by
    a plain :func:`monai_fine.networks.create_fine` network).
    """
    if checkpoint is None or not os.path.isfile(checkpoint):
        return {}
    path = os.path.realpath(checkpoint)
    return dict(_read_cached(path, os.path.getmtime(path)))


def create_network(
    checkpoint: str | os.PathLike | None = None,
    preset: str = "bcv",
    in_channels: int = 1,
    out_channels: int = 14,
    arch: str | None = None,
    spacing: Any = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build FINE with :func:`monai_fine.networks.create_fine` (or a peer, ``arch``) and record its arguments in its
    weights.

    Args:
        checkpoint: weights whose recorded network arguments decide the architecture when the file exists and has a
            record (``preset`` and ``kwargs`` then only give the :data:`RUNTIME_ARGS`; an argument of
            :data:`CONFLICT_ARGS` that asks for another network is refused, any other difference is logged). The
            bundle's ``preset``, ``memory``, ``scan_memory``, ``num_classes`` and ``roi_size`` default to the record,
            so only an explicit override can conflict. None, a missing file or one without a record: ``preset`` and
            ``kwargs`` decide.
        preset: ``"bcv"`` or ``"tiny"``.
        in_channels: input channels.
        out_channels: output channels (classes incl. background).
        arch: ``"fine"``, or a peer trained, evaluated and served by the same bundle in its place
            (:func:`monai_fine.networks.peers.create_peer`: ``"dynunet"``, nnU-Net's 3d_fullres plan for ``roi_size``
            at ``spacing``; ``"swinunetr"``). None: the one recorded in ``checkpoint``, else ``"fine"``. With a peer,
            the FINE-only arguments of the bundle's ``network_def`` (``preset``, ``memory``) are not used and
            ``scan_memory`` must be false.
        spacing: the training voxel size in mm (the bundle's ``pixdim``): DynUNet's plan depends on it; FINE's
            architecture does not (not recorded).
        kwargs: any other :class:`monai_fine.networks.FINE` argument (with a peer: ``roi_size``,
            ``deep_supervision``, ``use_checkpoint`` and the arguments of :data:`monai_fine.networks.peers.PEERS`).

    Returns:
        the network, with a ``network_config`` buffer (JSON of ``{"preset": ..., **kwargs}``; when rebuilt from a
        record, that record unchanged, so the weights load strictly) in its ``state_dict``, except when ``checkpoint``
        exists without a record (then the weights load strictly as before).

    Raises:
        ValueError: an unknown preset or a bad network argument (from :func:`create_fine`); a ``roi_size`` the
            network cannot take (:func:`check_roi_size`); weights of another configuration (naming the config ids).
    """
    from monai_fine.networks import create_fine

    record = read_network_config(checkpoint)  # stored back unchanged, so that the weights load strictly
    recorded_arch = record.get("arch", "fine") if record else None
    if arch is not None and recorded_arch is not None and arch != recorded_arch:
        raise ValueError(
            f"the weights in {checkpoint} are of arch {recorded_arch!r}, the config asks for arch={arch!r}. Drop the "
            "override (the bundle's arch follows the weights), or train in another bundle_root / ckpt_dir."
        )
    arch = arch or recorded_arch or "fine"
    if arch != "fine":
        return _create_peer_network(checkpoint, record, arch, in_channels, out_channels, spacing, kwargs)
    wanted = {"preset": preset, "in_channels": in_channels, "out_channels": out_channels}
    wanted.update({k: _plain(v) for k, v in kwargs.items()})
    check_roi_size(wanted.get("roi_size"), preset, wanted)
    recorded = dict(record)
    if recorded.get("scan_memory"):  # scan-memory weights recorded before these choices existed were trained so
        recorded = {**_SCAN_MEMORY_BEFORE, **recorded}
    config = dict(wanted)
    if config.get("scan_memory"):  # recorded, so that a later default cannot change what the weights compute
        effective = _effective(config)
        config = {**{k: effective[k] for k in _SCAN_MEMORY_BEFORE}, **config}
    if recorded:
        config = {**recorded, **{k: wanted[k] for k in RUNTIME_ARGS if k in wanted}}
        mine, theirs = _effective(wanted), _effective(recorded)
        # only what the caller gave (MONAI Label builds network_def with the config's defaults, not the weights')
        asked = sorted(CONFLICT_ARGS & (set(kwargs) | {"preset", "in_channels", "out_channels"}))
        conflicts = {k: (mine[k], theirs[k]) for k in asked if mine.get(k) != theirs.get(k)}
        if conflicts:
            raise ValueError(
                f"the weights in {checkpoint} are of another network configuration than the one asked for: "
                + "; ".join(
                    f"{_CONFIG_IDS.get(k, 'network_def#' + k)}={a!r}, the weights have {b!r}"
                    for k, (a, b) in conflicts.items()
                )
                + ". Drop the override (the bundle's ids follow the network recorded in the weights), or train in "
                "another bundle_root / ckpt_dir, or move the weights away."
            )
        differ = {k: (wanted.get(k), recorded.get(k)) for k in set(wanted) | set(recorded)}
        differ = {k: v for k, v in differ.items() if k not in RUNTIME_ARGS and k in wanted and v[0] != v[1]}
        if differ:  # spelled differently, the same network (e.g. a preset default written out)
            logger.info(f"network rebuilt from the arguments recorded in {checkpoint} (config, recorded): {differ}")
    args = dict(config)
    net = create_fine(args.pop("preset"), **args)
    if not checkpoint or not os.path.isfile(checkpoint) or recorded:
        net.register_buffer(CONFIG_BUFFER, _encode(record or config))
    return net


def _create_peer_network(
    checkpoint: Any,
    record: Mapping[str, Any],
    arch: str,
    in_channels: int,
    out_channels: int,
    spacing: Any,
    kwargs: dict[str, Any],
) -> torch.nn.Module:
    """:func:`create_network` for a peer: its record is ``arch``, the channels, ``roi_size`` and the arch's
    arguments; rebuilt from the record, only ``use_checkpoint`` and ``deep_supervision`` come from the caller."""
    from monai_fine.networks.peers import PEERS, create_peer

    kwargs = dict(kwargs)
    kwargs.pop("memory", None)  # the bundle's network_def always gives the FINE-only memory; a peer has none
    if kwargs.pop("scan_memory", False):
        raise ValueError(f"scan_memory=True needs FINE (memory 'full'); arch {arch!r} has no per-scan memory.")
    runtime = {k: kwargs.pop(k) for k in ("deep_supervision", "use_checkpoint") if k in kwargs}
    if arch in PEERS and "spacing" in PEERS[arch] and spacing is not None:
        kwargs.setdefault("spacing", spacing)
    wanted = {"arch": arch, "in_channels": in_channels, "out_channels": out_channels}
    wanted.update({k: _plain(v) for k, v in kwargs.items()})
    if wanted.get("roi_size") is None and not record:
        raise ValueError(f"arch {arch!r} needs roi_size (the training crop; network_def#roi_size).")
    config = wanted
    if record:  # the recorded peer; the channels and the arch's own arguments, when given otherwise, conflict
        config = dict(record)
        asked = ("in_channels", "out_channels", *(k for k in PEERS.get(arch, ()) if k != "spacing"))
        conflicts = {k: (wanted[k], record.get(k)) for k in asked if k in wanted and wanted[k] != record.get(k)}
        if conflicts:
            raise ValueError(
                f"the weights in {checkpoint} are of another {arch} than the one asked for: "
                + "; ".join(f"{_CONFIG_IDS.get(k, 'network_def#' + k)}={a!r}, the weights have {b!r}"
                            for k, (a, b) in conflicts.items())
                + ". Drop the override, or train in another bundle_root / ckpt_dir."
            )  # fmt: skip
    args = {k: v for k, v in config.items() if k != "arch"}
    net = create_peer(arch, **args, **runtime)
    if not checkpoint or not os.path.isfile(checkpoint) or record:
        net.register_buffer(CONFIG_BUFFER, _encode(record or config))
    return net


CONFLICT_ARGS = frozenset({
    "preset", "in_channels", "out_channels", "feature_size", "depths", "num_heads", "patch_size", "window_size",
    "memory", "memory_grid", "num_window_tokens", "num_volume_tokens", "scan_memory", "scan_write",
    "scan_read", "share_memory_attention", "mlp_ratio", "qkv_bias",
})  # fmt: skip
"""Network arguments that give another network (other parameters or another function): weights recorded with one
value do not serve a config asking for another (:func:`create_network` refuses, naming the config id)."""

#: How a scan memory was read and written before these network arguments existed (weights recorded without them).
_SCAN_MEMORY_BEFORE = {"scan_write": "all", "scan_read": "mean"}

_CONFIG_IDS = {"out_channels": "num_classes", "memory": "memory", "scan_memory": "scan_memory", "preset": "preset"}


def _effective(args: Mapping[str, Any]) -> dict[str, Any]:
    """Every FINE argument of ``args`` with the preset's and the class's defaults filled in, JSON-plain."""
    from monai_fine.networks import FINE, PRESETS

    defaults = {
        k: p.default for k, p in inspect.signature(FINE.__init__).parameters.items() if p.default is not p.empty
    }
    preset = PRESETS.get(args.get("preset", "bcv"), {})
    return {k: _plain(v) for k, v in {**defaults, **preset, **args}.items()}


def keep_largest_component_enabled(value: Any) -> bool:
    """The ``keep_largest_component`` tunable of ``evaluate.json`` and ``inference.json`` as a ``bool``.

    When true, the label map keeps, for each organ, only its largest 26-connected component (MONAI's
    ``KeepLargestConnectedComponentd`` with ``independent=True``; every abdominal organ of the BTCV label map is one
    connected structure, so a second component is a false positive). MONAI labels the components with
    scikit-image on CPU; a missing scikit-image is refused here, before any case is read, not at the first case.

    Raises:
        ValueError: ``value`` is not a boolean (:func:`monai_fine.bools.as_bool`).
        ImportError: enabled without scikit-image; names the extra that installs it.
    """
    from monai_fine.bools import as_bool
    from monai_fine.optional import require

    enabled = as_bool(value, "keep_largest_component")
    if enabled:
        require("skimage.measure", "keep_largest_component (MONAI's KeepLargestConnectedComponentd)")
    return enabled


def check_roi_size(roi_size: Any, preset: str = "bcv", kwargs: Mapping[str, Any] | None = None) -> bool:
    """Refuse a ``roi_size`` the network cannot take, naming the id, the value and the nearest sizes it can.

    The network divides the crop by ``patch_size x 2**(stages - 1)`` per axis (16 x 16 x 16 for ``tiny``,
    32 x 32 x 16 for ``bcv``). ``None`` (the preset's size) passes; an unknown preset is left to
    :func:`monai_fine.networks.create_fine`.

    Raises:
        ValueError: ``roi_size`` has not 3 positive entries, or one is not a multiple of the stride.
    """
    from monai_fine.networks import PRESETS

    if roi_size is None or preset not in PRESETS:
        return True
    args = _effective({"preset": preset, **(kwargs or {})})
    stride = [int(p) * 2 ** (len(args["depths"]) - 1) for p in args["patch_size"]]
    try:
        size = [int(r) for r in roi_size]
    except (TypeError, ValueError):
        size = []
    if len(size) != 3 or any(r <= 0 or r % s for r, s in zip(size, stride)):
        ok = [max(s, -(-r // s) * s) for r, s in zip(size, stride)] if len(size) == 3 else None
        hint = f"; the nearest larger size it takes is {ok}" if ok else ""
        raise ValueError(
            f"roi_size must be 3 positive multiples of the network stride {stride} (patch_size {args['patch_size']} "
            f"x 2**{len(args['depths']) - 1} for preset {preset!r}), got {roi_size!r}{hint}."
        )
    return True


def load_network(checkpoint: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> torch.nn.Module:
    """The network of ``checkpoint`` with its weights, rebuilt from the recorded arguments (``kwargs``: runtime
    arguments, or the full arguments for weights without a record), in eval mode.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    net = create_network(checkpoint, **{**read_network_config(checkpoint), **kwargs})
    ckpt = torch_load(checkpoint)
    net.load_state_dict(ckpt.get("model", ckpt))
    return net.to(device).eval()


def rebind_config_modules() -> list[str]:
    """Evaluate again the ``$import`` statements of the config that is being resolved; returns them.

    MONAI evaluates every ``$import`` of a config before its first expression, so when the bundle folder is not on
    ``sys.path`` (``monai.bundle.load`` or ``python -m monai.bundle run`` from another folder, the zip's ``monai_fine``
    not installed) ``import monai_fine`` leaves a stub that raises ``OptionalImportError`` on use. The configs'
    ``bundle_code`` id puts the bundle folder (``bundle_home``) on ``sys.path`` and then calls this, from the first
    ``initialize`` expression: the statements are run again and rebind the parser's globals, so every later
    expression and ``_target_`` sees the real modules. Called outside a config resolution, it does nothing.
    """
    import sys

    from monai.bundle.config_item import ConfigExpression
    from monai.bundle.reference_resolver import ReferenceResolver

    frame = sys._getframe(1)
    while frame is not None and not isinstance(frame.f_locals.get("self"), ReferenceResolver):
        frame = frame.f_back
    if frame is None:
        return []
    resolver = frame.f_locals["self"]
    done = []
    for id_, item in resolver.items.items():
        if isinstance(item, ConfigExpression) and item.is_import_statement(item.get_config()):
            resolver.resolved_content[id_] = item.evaluate()
            done.append(item.get_config())
    return done


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_bundle(
    out: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    weights_url: str | None = None,
    bundle: str | os.PathLike | None = None,
    max_file_mb: float = 25.0,
) -> str:
    """Build the Model Zoo zip ``out/<name>_v<version>.zip`` (top folder ``<name>``, see :data:`BUNDLE_NAME`).

    The zip holds ``LICENSE``, ``configs/``, ``docs/``, ``scripts/``, a copy of the ``monai_fine`` package (the configs
    import it; when no ``monai_fine`` is importable, their ``bundle_code`` id puts the bundle folder on ``sys.path``,
    see :func:`rebind_config_modules`) and the weights: ``models/model.pt`` when
    ``weights`` is at most ``max_file_mb`` MB, otherwise ``large_files.yml`` with ``weights_url`` and the md5 (what
    ``python -m monai.bundle download_large_files`` reads; the Zoo's per-file limit is 25 MB).

    Args:
        out: output folder (created).
        weights: a ``model.pt`` to ship (optional).
        weights_url: where the weights will be hosted; required when ``weights`` is over ``max_file_mb``.
        bundle: the bundle folder (default: :func:`bundle_dir`).
        max_file_mb: the largest file put in the zip.

    Returns:
        the path of the zip.

    Raises:
        FileNotFoundError: ``weights`` or the bundle folder is missing.
        ValueError: ``weights`` is too large and no ``weights_url`` is given.
    """
    import monai_fine

    src = Path(bundle) if bundle is not None else bundle_dir()
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    name, version = BUNDLE_NAME, meta["version"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}_v{version}.zip"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "eval", "runs", "*.egg-info")
    stage = out / f".{name}_stage"
    shutil.rmtree(stage, ignore_errors=True)
    root = stage / name
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "eval", "runs", "models"))
    shutil.copytree(Path(monai_fine.__file__).parent, root / "monai_fine", ignore=skip)
    (root / "models").mkdir(exist_ok=True)
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"weights not found: {weights}")
        size_mb = weights.stat().st_size / 2**20
        if size_mb <= max_file_mb:
            shutil.copy2(weights, root / "models" / "model.pt")
        elif not weights_url:
            raise ValueError(
                f"weights {weights} are {size_mb:.0f} MB, over the {max_file_mb} MB per-file limit: give weights_url "
                "(where model.pt will be hosted) so that large_files.yml can point to it."
            )
        else:
            (root / "large_files.yml").write_text(
                "large_files:\n"
                f'  - path: "models/model.pt"\n    url: "{weights_url}"\n    hash_val: "{_md5(weights)}"\n'
                '    hash_type: "md5"\n'
            )
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(stage).as_posix())
    shutil.rmtree(stage)
    return str(target)
