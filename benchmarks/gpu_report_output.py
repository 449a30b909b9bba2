# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``gpu_report``'s output: the results so far (:class:`Report`), rewritten into every file after each configuration,
the markdown report, and the log that copies everything printed (:class:`Tee`)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from benchmarks.common import write_csv

__all__ = [
    "BUNDLE_FIELDS",
    "FILES",
    "INFER_FIELDS",
    "LOOP_FIELDS",
    "TRAIN_FIELDS",
    "Report",
    "Tee",
    "dims",
    "train_ratios",
]

TRAIN_FIELDS = (
    "config", "model", "amp", "amp_dtype", "batch", "roi", "params_m", "status", "train_s", "train_s_min",
    "train_s_max", "steps", "warmup", "peak_mb", "model_mb", "reserved_mb", "device", "device_name", "torch", "cuda",
)  # fmt: skip
INFER_FIELDS = (
    "config", "scan_memory", "amp", "amp_dtype", "scan", "roi", "overlap", "sw_batch_size", "windows", "status",
    "infer_s", "s_per_window", "peak_mb", "model_mb", "reserved_mb", "device", "device_name", "torch", "cuda",
)  # fmt: skip
LOOP_FIELDS = (
    "config", "compile", "status", "bundle_s", "bare_s", "it_per_s", "data_ms", "ratio", "low", "high", "rounds",
    "wall_s", "seconds", "peak_mb", "output", "device", "device_name", "torch", "cuda",
)  # fmt: skip
BUNDLE_FIELDS = ("epoch", "mean_loss", "iterations", "epoch_s", "status", "device", "device_name", "torch", "cuda")
FILES = (
    "gpu_report.md", "gpu_report.json", "gpu_report_train.csv", "gpu_report_infer.csv", "gpu_report_loop.csv",
    "gpu_report_bundle.csv",
)  # fmt: skip


class Tee:
    """Write to the terminal and the log file."""

    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        if not self.log.closed:
            self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if not self.log.closed:
            self.log.flush()
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


class Report:
    """Results so far; :meth:`write` rewrites every output file (called after each configuration)."""

    def __init__(self, out: Path, env: dict, settings: dict) -> None:
        self.out, self.env, self.settings = out, env, settings
        self.train: list[dict] = []
        self.infer: list[dict] = []
        self.loop: list[dict] = []  # the bundle's loop with the GPU recipe, without and with compile
        self.bundle_infer: list[dict] = []  # inference.json on the synthetic scan
        self.bundle: dict = {"status": "not run", "epochs": []}
        self.notes: list[str] = []
        self.lock = threading.Lock()

    def device_cols(self) -> dict:
        return {k: self.env[k] for k in ("device", "device_name", "torch", "cuda")}

    def note(self, text: str) -> None:
        print(f"[gpu_report] NOTE: {text}", flush=True)
        self.notes.append(text)

    def _csv(self, name: str, fields: tuple, rows: list[dict]) -> None:
        cols = self.device_cols()
        write_csv(self.out / name, fields, [{**cols, **row} for row in rows], extrasaction="ignore")

    def write(self) -> None:
        with self.lock:
            data = {
                "env": self.env,
                "settings": self.settings,
                "train": self.train,
                "infer": self.infer,
                "loop": self.loop,
                "bundle_infer": self.bundle_infer,
                "bundle": self.bundle,
                "notes": self.notes,
            }
            (self.out / "gpu_report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
            self._csv("gpu_report_train.csv", TRAIN_FIELDS, self.train)
            self._csv("gpu_report_infer.csv", INFER_FIELDS, self.infer)
            self._csv("gpu_report_loop.csv", LOOP_FIELDS, self.loop + self.bundle_infer)
            epochs = [{**e, "status": self.bundle["status"]} for e in self.bundle["epochs"]]
            self._csv("gpu_report_bundle.csv", BUNDLE_FIELDS, epochs)
            (self.out / "gpu_report.md").write_text(self.markdown())

    def markdown(self) -> str:
        e, s = self.env, self.settings
        lines = [
            "# FINE GPU report",
            "",
            f"- device: **{e['device_name']}** ({e['device']}), {e.get('device_memory_gib', 'n/a')} GiB",
            f"- torch {e['torch']}, CUDA {e['cuda']}, cuDNN {e.get('cudnn')}, MONAI {e['monai']}, "
            f"Python {e['python']}, host CPU {e['host_cpu']} ({e['host_cores']} cores)",
            f"- command: `{s['command']}`",
            f"- started {s['started_utc']} UTC; elapsed {s.get('elapsed_s', 0):.0f} s of a {s['budget_s']} s budget",
            f"- AMP: torch.autocast({s['amp_dtype']}); AMP off = fp32 with TF32 {'on' if s['tf32'] else 'off'} "
            f"(matmuls and convolutions: {e.get('fp32_precision', 'n/a')}); cudnn.benchmark {s['cudnn_benchmark']}",
            "",
            f"## Training step (batch {s['batch']}, crop {s['roi']}, DiceCE + deep supervision, SGD)",
            "",
            "| config | AMP | params M | step s (median) | min-max | peak MiB | weights MiB | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.train:
            lines.append(
                f"| {r['config']} | {r['amp_dtype'] if r['amp'] else 'off (fp32)'} | {fmt(r.get('params_m'))} | "
                f"{fmt(r.get('train_s'))} | {fmt(r.get('train_s_min'))}-{fmt(r.get('train_s_max'))} | "
                f"{fmt(r.get('peak_mb'))} | {fmt(r.get('model_mb'))} | {r['status']} |"
            )
        ratios = train_ratios(self.train)
        if ratios:
            lines += ["", "Ratios (same AMP setting): " + "; ".join(f"{k} {v}" for k, v in ratios.items())]
        lines += [
            "",
            f"## Inference (`FINEInferer`, scan {s['scan']}, roi {s['roi']}, overlap {s['overlap']}, "
            f"sw_batch_size {s['sw_batch_size']}, stitched on the device)",
            "",
            "| config | AMP | windows | seconds | s / window | peak MiB | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.infer:
            lines.append(
                f"| {r['config']} | {r['amp_dtype'] if r['amp'] else 'off (fp32)'} | {r.get('windows')} | "
                f"{fmt(r.get('infer_s'))} | {fmt(r.get('s_per_window'))} | {fmt(r.get('peak_mb'))} | {r['status']} |"
            )
        lines += self._loop_markdown()
        b = self.bundle
        lines += ["", "## Bundle training on the phantom (`train.json`, `ConfigWorkflow`)", ""]
        lines.append(f"- status: {b['status']}; " + ", ".join(f"{k}: {v}" for k, v in b.get("setup", {}).items()))
        if b.get("first_epoch_loss") is not None:
            lines.append(
                f"- mean loss first epoch {b['first_epoch_loss']:.4f}, last epoch {b['last_epoch_loss']:.4f}: "
                f"{'fell' if b['loss_fell'] else 'DID NOT FALL'}"
            )
        if b["epochs"]:
            lines += ["", "| epoch | mean loss | iterations | seconds |", "|---|---|---|---|"]
            lines += [
                f"| {x['epoch']} | {x['mean_loss']:.4f} | {x['iterations']} | {x['epoch_s']:.1f} |" for x in b["epochs"]
            ]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def _loop_markdown(self) -> list[str]:
        lines = [
            "",
            "## The bundle's training loop, GPU recipe (cached volumes and crops on the device, `ThreadDataLoader`, "
            "AMP), against the bare step",
            "",
            "| config | bundle s/it | it/s | bare s | bundle/bare [95 % interval] | data ms | rounds | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.loop:
            interval = f"{fmt(r.get('ratio'))} [{fmt(r.get('low'))}, {fmt(r.get('high'))}]"
            lines.append(
                f"| {r['config']} | {fmt(r.get('bundle_s'))} | {fmt(r.get('it_per_s'))} | {fmt(r.get('bare_s'))} | "
                f"{interval} | {fmt(r.get('data_ms'))} | {fmt(r.get('rounds'))} | {r['status']} |"
            )
        for r in self.bundle_infer:
            lines.append(
                f"\n- {r['config']}: {fmt(r.get('seconds'))} s, peak {fmt(r.get('peak_mb'))} MiB, output "
                f"{r.get('output', '-')}: {r['status']}"
            )
        return lines


def dims(size) -> str:
    return "x".join(map(str, size))


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def train_ratios(rows: list[dict]) -> dict:
    """``full/none`` time and memory, and each peer against ``full``, per AMP setting."""
    out = {}
    ok = {(r["model"], r["amp"]): r for r in rows if r["status"] == "ok"}
    for amp in (False, True):
        tag = "amp" if amp else "fp32"
        full = ok.get(("fine:full", amp))
        pairs = [("full/none", full, ok.get(("fine:none", amp)))]
        pairs += [(f"{m}/full", ok.get((m, amp)), full) for m in ("swinunetr", "dynunet")]
        for name, a, b in pairs:
            if a and b and b.get("train_s") and b.get("peak_mb"):
                out[f"{name} {tag}"] = (
                    f"time {a['train_s'] / b['train_s']:.3f}, memory {a['peak_mb'] / b['peak_mb']:.3f}"
                )
    return out
