# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The bundle's whole training loop against the bare step of the same network, loss and optimizer, in one process:
how much of an iteration is outside the network, and where it goes.

The trainer is built from the real ``bundle/configs/train.json`` through ``monai.bundle.ConfigWorkflow`` on a phantom
and runs its own Ignite loop. Ignite's events time each iteration (``GET_BATCH_STARTED`` of one iteration to that of
the next, so the ``ITERATION_COMPLETED`` handlers count) and its parts; between two bundle iterations the same
network, loss and optimizer (copies, so the bundle's training is not perturbed) take one bare step on plain tensors of
the batch's shape and one on the same tensors as ``MetaTensor`` (what the network and loss would cost if the batch's
metadata travelled with them). The three alternate in one process (their order rotated every round) so that a drift
of the machine's speed hits them alike; the ratio bundle/bare is the median of the per-round ratios with its
distribution-free interval (``common.paired_ratio``).

Parts of a bundle iteration (their means add up to the total's mean; ``other`` is the rest: Ignite's loop and MONAI's
bookkeeping between the events; a handler of one of the trainer's ``IterationEvents`` counts in the part it ends):

- ``data``: waiting for the batch (``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``), the random transforms with
  ``num_workers 0``;
- ``prepare_batch``: ``monai_fine.engines.PrepareScanBatch`` (to the device, MetaTensor -> tensor);
- ``forward`` (with ``network.train()`` and ``zero_grad``), ``loss``, ``backward_step``: between the trainer's own
  ``IterationEvents``;
- ``handlers``: the ``ITERATION_COMPLETED`` handlers (stats, progress bar, TensorBoard, preemption, ...).

Validation and the epoch end (LR schedule, checkpoint) run once per epoch, outside the timed iterations: they are
timed once each and also shown per training iteration at the setting's schedule (``amortized``).

    python -m benchmarks.bench_pipeline                       # (a) the demo's settings, (b) fine_bcv at 128x128x64
    python -m benchmarks.bench_pipeline --settings demo --rounds 30
    python -m benchmarks.bench_pipeline --quick               # both at tiny sizes, a few iterations (< 1 min)

With ``num_workers > 0`` the workers keep loading while the bare steps run, so ``data`` is then a lower bound of what
an uninterrupted run waits; the core competition they cause is measured (it slows every step alike).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, cpu_name, interval_verdict, paired_ratio, timed_calls, write_csv

__all__ = ["CSV_FIELDS", "PARTS", "QUICK", "SETTINGS", "BareSteps", "LoopTimer", "build_trainer", "main", "markdown",
           "measure", "set_overrides", "setting_overrides", "setting_phantom", "summarize"]  # fmt: skip

PARTS = ("data", "prepare_batch", "forward", "loss", "backward_step", "handlers", "other")
TARGET = 1.10  # the bundle loop costs at most ~10 % over the bare step
#: the settings: a phantom, the bundle overrides beyond the phantom's paths, and the training schedule that amortizes
#: the once-per-epoch costs (iterations per epoch, epochs per validation)
SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {  # monai_fine.demo.demo's own overrides (read from its signature, so they follow it)
        "demo": True, "num_cases": 8, "shape": None, "spacing": (3.0, 3.0, 3.0),
        "overrides": {}, "epoch_length": None, "val_every": None,
    },
    "fine_bcv": {  # the bundle's defaults (posneg crops, SGD, memory full) with fine_bcv at 128x128x64
        "demo": False, "num_cases": 4, "shape": (160, 160, 80), "spacing": (0.76, 0.76, 3.0),
        "overrides": {"preset": "bcv", "roi_size": [128, 128, 64]}, "epoch_length": 18, "val_every": 10,
    },
}  # fmt: skip
#: --quick: both settings with the ``test`` preset (the smallest FINE) on small volumes
QUICK: dict[str, dict[str, Any]] = {
    name: {**cfg, "num_cases": 4, "shape": (48, 48, 32), "spacing": (4.0, 4.0, 4.0),
           "overrides": {**cfg["overrides"], "preset": "test", "roi_size": [32, 32, 16], "pixdim": [4.0, 4.0, 4.0]}}
    for name, cfg in SETTINGS.items()
}  # fmt: skip
CSV_FIELDS = ("setting", "measure", "median_ms", "p90_ms", "mean_ms", "share_of_bundle", "n", "ratio", "low", "high",
              "coverage", "verdict", "device", "device_name", "threads", "num_workers", "torch", "monai")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- building
def _demo_defaults() -> dict[str, Any]:
    """``monai_fine.demo.demo``'s keyword defaults (its training settings)."""
    from monai_fine.demo import demo

    return {k: p.default for k, p in inspect.signature(demo).parameters.items()}


def setting_overrides(cfg: dict[str, Any], data_dir: Path, root: Path, rounds: int, warmup: int) -> dict[str, Any]:
    """Bundle overrides of a setting: its tunables, the phantom's paths, and one epoch of the measured iterations
    with validation out of the loop (it is timed on its own)."""
    from monai_fine.demo import demo_overrides

    over: dict[str, Any] = {"bundle_root": str(root), "dataset_dir": str(data_dir), "resume": False}
    if cfg["demo"]:
        d = _demo_defaults()
        over.update(demo_overrides(root, data_dir, roi_size=d["roi_size"], device=None, preset=d["preset"],
                                    memory=d["memory"], scan_memory=d["scan_memory"], num_workers=d["num_workers"],
                                    seed=d["seed"]))  # fmt: skip
        over.update(num_samples=d["num_samples"], crop_sampler=d["crop_sampler"], optimizer_name=d["optimizer_name"],
                    learning_rate=d["learning_rate"])  # fmt: skip
    else:
        over["pixdim"] = list(cfg["spacing"])
    over.update(cfg["overrides"])
    over.update(max_epochs=1, epoch_length=warmup + rounds + 1, val_interval=10**6)
    return over


def setting_phantom(cfg: dict[str, Any], out: Path) -> Path:
    """The setting's phantom in BTCV layout under ``out``."""
    from monai_fine.data import make_phantom_dataset

    shape = cfg["shape"] or _demo_defaults()["shape"]
    make_phantom_dataset(out, num_cases=cfg["num_cases"], seed=0, shape=tuple(shape), spacing=cfg["spacing"],
                         num_test=0, val_fraction=0.25)  # fmt: skip
    return out


def build_trainer(overrides: dict[str, Any], device: str | None):
    """An initialised train ``ConfigWorkflow`` of the real ``bundle/configs/train.json`` (as ``run_bundle`` builds
    it) with ``overrides``; ``device`` (e.g. ``"cpu"``) overrides the bundle's choice."""
    from monai_fine.bundle_tools import bundle_workflow

    if device is not None:
        overrides = {**overrides, "device": f"$torch.device('{device}')"}
    return bundle_workflow(["train.json"], "train", **overrides)


# ----------------------------------------------------------------------------------------------------------- timing
def _first(engine, event, handler: Callable) -> None:
    """Attach ``handler`` to ``event`` ahead of the handlers already there (Ignite appends; its list is reordered)."""
    engine.add_event_handler(event, handler)
    handlers = engine._event_handlers[event]
    handlers.insert(0, handlers.pop())


class LoopTimer:
    """Per-iteration wall times of a MONAI ``SupervisedTrainer`` and their parts, from Ignite's events.

    ``between`` runs at the start of every iteration but the first, outside the timed span (the bare steps).
    """

    def __init__(self, engine, sync: Callable[[], None], between: Callable[[], None]) -> None:
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        self.sync, self.between, self.rows, self._t, self._prep = sync, between, [], {}, 0.0
        marks = {Events.GET_BATCH_COMPLETED: "batch", Events.ITERATION_STARTED: "started",
                 IterationEvents.FORWARD_COMPLETED: "forward", IterationEvents.LOSS_COMPLETED: "loss",
                 IterationEvents.MODEL_COMPLETED: "model", Events.ITERATION_COMPLETED: "completed"}  # fmt: skip
        _first(engine, Events.GET_BATCH_STARTED, self._next)
        for event, name in marks.items():
            _first(engine, event, lambda _e, name=name: self._mark(name))
        _first(engine, Events.EPOCH_COMPLETED, lambda _e: self._next(None, last=True))
        prepare = engine.prepare_batch

        def timed_prepare(*args, **kwargs):
            t0 = time.perf_counter()
            out = prepare(*args, **kwargs)
            self.sync()
            self._prep += time.perf_counter() - t0
            return out

        engine.prepare_batch = timed_prepare

    def _mark(self, name: str) -> None:
        self.sync()
        self._t[name] = time.perf_counter()

    def _next(self, _engine, last: bool = False) -> None:
        self.close()
        if not last:
            self.between()
            self._t, self._prep = {"start": time.perf_counter()}, 0.0

    def close(self, _engine=None) -> None:
        """End the iteration being timed now (also called on Ignite's ``INTERRUPT``, for a trainer that is run one
        iteration at a time)."""
        self.sync()
        now = time.perf_counter()
        if "start" in self._t:
            self.rows.append(self._parts(now))
        self._t = {}

    def _parts(self, end: float) -> dict[str, float]:
        t = self._t
        row = {"total": end - t["start"], "data": t["batch"] - t["start"], "prepare_batch": self._prep,
               "forward": t["forward"] - t["started"] - self._prep, "loss": t["loss"] - t["forward"],
               "backward_step": t["model"] - t["loss"], "handlers": end - t["completed"]}  # fmt: skip
        row["other"] = row["total"] - sum(row[p] for p in PARTS if p != "other")
        return row


class BareSteps:
    """The bare training step of the bundle's network, loss and optimizer (copies), on plain tensors and on the same
    tensors as ``MetaTensor``; armed with the first prepared batch (its shapes, its ``roi_box``)."""

    def __init__(self, wf, sync: Callable[[], None]) -> None:
        import torch

        from monai_fine.optim import create_optimizer

        trainer = wf.parser.get_parsed_content("train#trainer")
        self.net = copy.deepcopy(trainer.network).train()
        self.loss_fn = copy.deepcopy(trainer.loss_function)
        opt = wf.parser.get_parsed_content("optimizer_name")
        self.opt = create_optimizer(opt, self.net, lr=float(wf.parser.get_parsed_content("learning_rate")))
        self.sync, self.inputs, self.times = sync, None, {"bare": [], "bare_meta": []}
        # the trainer's AMP (autocast and a gradient scaler on CUDA) when it uses it
        self.amp = bool(trainer.amp) and next(self.net.parameters()).is_cuda
        self.amp_kwargs = dict(getattr(trainer, "amp_kwargs", None) or {})
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def arm(self, image, label, kwargs: dict) -> None:
        """Keep clones of one prepared batch: plain tensors and ``MetaTensor`` views of them."""
        from monai.data import MetaTensor

        plain = (image.detach().clone(), label.detach().clone(), {k: v.clone() for k, v in kwargs.items()})
        meta = (MetaTensor(plain[0]), MetaTensor(plain[1]), {k: MetaTensor(v) for k, v in plain[2].items()})
        self.inputs = {"bare": plain, "bare_meta": meta}

    def step(self, kind: str) -> None:
        """One timed step: zero_grad, forward, loss, backward, optimizer step."""
        import torch

        x, y, kwargs = self.inputs[kind]
        self.sync()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        if self.amp:
            with torch.autocast("cuda", **self.amp_kwargs):
                loss = self.loss_fn(self.net(x, **kwargs), y).mean()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.loss_fn(self.net(x, **kwargs), y).mean().backward()
            self.opt.step()
        self.sync()
        self.times[kind].append(time.perf_counter() - t0)


# -------------------------------------------------------------------------------------------------------- measuring
def _arming_prepare(engine, bare: BareSteps) -> None:
    """Wrap the trainer's ``prepare_batch`` so that its first output arms ``bare``."""
    prepare = engine.prepare_batch

    def arm_once(*args, **kwargs):
        out = prepare(*args, **kwargs)
        if bare.inputs is None:
            bare.arm(out[0], out[1], out[3] if len(out) > 3 else {})
        return out

    engine.prepare_batch = arm_once


def measure(cfg: dict[str, Any], rounds: int, warmup: int, device: str | None, work: Path) -> dict[str, Any]:
    """Run one setting: ``warmup + rounds`` bundle iterations interleaved with the bare steps, then one validation;
    returns the per-iteration times (warm-up dropped) and the once-per-epoch costs."""
    import torch
    from ignite.engine import Events

    data = setting_phantom(cfg, work / "data")
    wf = build_trainer(setting_overrides(cfg, data, work / "run", rounds, warmup), device)
    trainer = wf.parser.get_parsed_content("train#trainer")
    dev = torch.device(wf.parser.get_parsed_content("device"))
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    bare = BareSteps(wf, sync)
    state = {"round": 0}

    def between() -> None:  # the bare steps of the round that just ended, order rotated every round
        kinds = ("bare", "bare_meta") if state["round"] % 2 == 0 else ("bare_meta", "bare")
        for kind in kinds:
            bare.step(kind)
        state["round"] += 1

    _arming_prepare(trainer, bare)
    timer = LoopTimer(trainer, sync, lambda: between() if bare.inputs is not None else None)
    epoch_end: dict[str, float] = {}
    _first(trainer, Events.EPOCH_COMPLETED, lambda _e: epoch_end.setdefault("t0", time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _e: epoch_end.setdefault("t1", time.perf_counter()))
    trainer.run()
    if "t1" not in epoch_end:  # stopped before its epoch ended (a signal: the bundle's preemption handler)
        state_ = trainer.state
        raise RuntimeError(f"the trainer stopped at iteration {state_.iteration} of {state_.epoch_length}, before its "
                           "epoch ended: no measurement (was the run signalled?)")  # fmt: skip
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    validation_s = timed_calls(lambda: evaluator.run(), 1, sync)[0][0]
    rows = timer.rows[warmup:]
    n = min(len(rows), len(bare.times["bare"]) - warmup, len(bare.times["bare_meta"]) - warmup)
    return {"rows": rows[:n], "bare": bare.times["bare"][warmup:warmup + n],
            "bare_meta": bare.times["bare_meta"][warmup:warmup + n], "validation_s": validation_s,
            "epoch_end_s": epoch_end["t1"] - epoch_end["t0"], "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
            "threads": torch.get_num_threads(), "num_workers": int(wf.parser.get_parsed_content("num_workers")),
            "iterations_per_validation": _schedule(cfg, wf)}  # fmt: skip


def _schedule(cfg: dict[str, Any], wf) -> int:
    """Training iterations per validation at the setting's schedule (the demo: one validation at its end)."""
    if cfg["demo"]:
        d = _demo_defaults()
        return int(d["max_epochs"] * d["epoch_length"])
    return int(cfg["epoch_length"] * cfg["val_every"])


# -------------------------------------------------------------------------------------------------------- reporting
def _p90(values: list[float]) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]


def _stat_row(setting: str, name: str, values: list[float], total_mean: float, res: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: median, p90 and mean in ms, the mean's share of the bundle iteration's mean."""
    mean = statistics.fmean(values)
    return {"setting": setting, "measure": name, "median_ms": round(1e3 * statistics.median(values), 3),
            "p90_ms": round(1e3 * _p90(values), 3), "mean_ms": round(1e3 * mean, 3),
            "share_of_bundle": round(mean / total_mean, 4) if total_mean else None, "n": len(values),
            **{k: res[k] for k in ("device", "device_name", "threads", "num_workers")}}  # fmt: skip


def summarize(setting: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """The setting's CSV rows: the bundle iteration, its parts, the bare steps, the once-per-epoch costs (timed once
    and per training iteration at the setting's schedule) and the paired ratios bundle/bare and bare_meta/bare."""
    import monai
    import torch

    if not res["rows"]:
        raise RuntimeError(f"{setting}: no measured round (more --rounds?)")
    total = [r["total"] for r in res["rows"]]
    mean = statistics.fmean(total)
    rows = [_stat_row(setting, "bundle", total, mean, res)]
    rows += [_stat_row(setting, f"bundle:{p}", [r[p] for r in res["rows"]], mean, res) for p in PARTS]
    rows += [_stat_row(setting, k, res[k], mean, res) for k in ("bare", "bare_meta")]
    per_it = res["iterations_per_validation"]
    for k in ("validation_s", "epoch_end_s"):
        name = k[: -len("_s")]
        rows.append(_stat_row(setting, f"{name} (once)", [res[k]], mean, res))
        rows.append(_stat_row(setting, f"{name} (amortized, 1/{per_it} it)", [res[k] / per_it], mean, res))
    for mode, bound in (("bundle", TARGET), ("bare_meta", None)):
        pr = paired_ratio({mode: total if mode == "bundle" else res[mode], "bare": res["bare"]}, mode, "bare")
        verdict = interval_verdict(pr["low"], pr["high"], bound) if bound else ""
        rows.append({"setting": setting, "measure": f"{mode}/bare", "n": pr["rounds"], "ratio": pr["ratio"],
                     "low": pr["low"], "high": pr["high"], "coverage": pr["coverage"], "verdict": verdict,
                     **{k: res[k] for k in ("device", "device_name", "threads", "num_workers")}})  # fmt: skip
    for r in rows:
        r.update(torch=torch.__version__, monai=monai.__version__)
    return rows


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    """One table per setting: times (median, p90, mean, share of the bundle iteration), then the paired ratios."""
    out = ["# The bundle's training loop against the bare step", "", f"`{command}`", ""]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        at = [r for r in rows if r["setting"] == setting]
        first = at[0]
        head = (
            f"{first['device_name']} ({first['device']}), {first['threads']} threads, num_workers "
            f"{first['num_workers']}, torch {first['torch']}, MONAI {first['monai']}"
        )
        out += [f"## {setting}", "", head, "", "| measure | median ms | p90 ms | mean ms | share of bundle | n |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        out += [f"| {r['measure']} | {r['median_ms']} | {r['p90_ms']} | {r['mean_ms']} | {_cell(r['share_of_bundle'])} "
                f"| {r['n']} |" for r in at if r.get("ratio") is None]  # fmt: skip
        out += [
            "",
            "| ratio (median of per-round ratios) | ratio | interval | coverage | rounds | target |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['measure']} | {r['ratio']} | [{r['low']}, {r['high']}] | {r['coverage']} | {r['n']} | "
            f"{f'<= {TARGET}: ' + r['verdict'] if r['verdict'] else ''} |"
            for r in at
            if r.get("ratio") is not None
        ]
        out.append("")
    return "\n".join(out)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 20 demo, 6 fine_bcv, 3 quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up rounds, dropped (default 3; 1 fine_bcv, quick)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda:0; default the bundle's (CUDA if available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--num_workers", type=int, default=None, help="loader workers (default the bundle's)")
    p.add_argument("--quick", action="store_true", help="tiny network and volumes, a few rounds: a check of the script")
    p.add_argument(
        "--set", action="append", default=[], metavar="ID=VALUE",
        help="a bundle override of every setting, e.g. scan_memory=true (VALUE as JSON if it parses)",
    )  # fmt: skip
    p.add_argument("--csv", default=str(RESULTS_DIR / "bench_pipeline.csv"), help="CSV path; the table beside it (.md)")
    return p.parse_args(argv)


def set_overrides(items: list[str]) -> dict[str, Any]:
    """``--set ID=VALUE`` items as bundle overrides (``VALUE`` as JSON when it parses, else the string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes ID=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _rounds(args: argparse.Namespace, name: str) -> tuple[int, int]:
    if args.quick:
        return args.rounds or 3, 1 if args.warmup is None else args.warmup
    big = name == "fine_bcv"
    return args.rounds or (6 if big else 20), (1 if big else 3) if args.warmup is None else args.warmup


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every setting asked for, print a ``BENCH_PIPELINE {json}`` line per setting, write the CSV and the
    markdown table; returns the CSV rows."""
    import torch

    args = _args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else SETTINGS
    rows: list[dict[str, Any]] = []
    for name in args.settings:
        cfg = settings[name]
        if args.num_workers is not None:
            cfg = {**cfg, "overrides": {**cfg["overrides"], "num_workers": args.num_workers}}
        if args.set:
            cfg = {**cfg, "overrides": {**cfg["overrides"], **set_overrides(args.set)}}
        rounds, warmup = _rounds(args, name)
        with tempfile.TemporaryDirectory(prefix=f"bench_pipeline_{name}_") as work:
            res = measure(cfg, rounds, warmup, args.device, Path(work))
        at = summarize(name, res)
        times = {"bundle": [r["total"] for r in res["rows"]], "bare": res["bare"], "bare_meta": res["bare_meta"]}
        print("BENCH_PIPELINE " + json.dumps({"setting": name, "rows": at, "times_s": times}), flush=True)
        rows += at
    out = Path(args.csv)
    write_csv(out, CSV_FIELDS, rows)
    md = markdown(rows, "python -m benchmarks.bench_pipeline " + " ".join(sys.argv[1:] if argv is None else argv))
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return rows


if __name__ == "__main__":
    main()
