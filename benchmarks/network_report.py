# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``bench_network``'s results: one CSV row per configuration from its workers' runs (:func:`aggregate`), the ratios
and design targets per crop (:func:`summarize`), and the summary in words and as markdown."""

from __future__ import annotations

import statistics

from benchmarks.common import interval_verdict, paired_ratio, roi_str

__all__ = ["CSV_FIELDS", "PAIRED_KEY", "aggregate", "print_summary", "summarize", "sweep_markdown", "verdict"]

CSV_FIELDS = (
    "config", "model", "memory", "scan_memory", "batch", "roi", "device", "device_name", "threads", "torch", "monai",
    "fused_attn", "tf32", "params", "params_m", "params_tokens", "params_memory_norms", "params_memory_attn",
    "gflops_fwd", "gmacs_fwd", "gflops_fwd_per_crop", "gflops_fwd_one_pass", "gflops_train_step",
    "train_s", "train_s_per_crop", "train_s_min", "train_s_max", "train_runq_wait", "train_peak_mb",
    "infer_s", "infer_s_per_crop", "infer_one_pass_s", "two_pass_ratio", "infer_runq_wait", "infer_peak_mb",
    "mem_baseline_mb", "mem_method", "warmup", "steps", "repeats", "status",
)  # fmt: skip
PAIRED_KEY = "full/none paired train_s <= 1.05"  # judged by its interval (:func:`interval_verdict`)


def _memory_columns(memory: str | None) -> dict:
    """``memory`` and ``scan_memory`` of a row from its configuration's ``MEMORY_CONFIGS`` name (None: a peer)."""
    if memory is None:
        return {"memory": None, "scan_memory": False}
    from monai_fine.networks import MEMORY_CONFIGS

    mode = MEMORY_CONFIGS[memory]
    return {"memory": mode.memory, "scan_memory": mode.scan_memory}


def _pooled_times(row: dict, ok: list[dict], batch: int) -> None:
    """Timed steps pooled over repeats: medians (and per crop), range, run-queue waits, the two-pass ratio."""

    def pooled(key: str) -> list[float]:
        return [t for r in ok for t in r.get(key, [])]

    train = pooled("train_times")
    if train:
        row["train_s"] = round(statistics.median(train), 4)
        row["train_s_per_crop"] = round(row["train_s"] / batch, 4)
        row["train_s_min"], row["train_s_max"] = round(min(train), 4), round(max(train), 4)
    infer, one_pass = pooled("infer_times"), pooled("infer_one_pass_times")
    if infer:
        row["infer_s"] = round(statistics.median(infer), 4)
        row["infer_s_per_crop"] = round(row["infer_s"] / batch, 4)
    for phase in ("train", "infer"):
        waits = pooled(f"{phase}_waits")
        if waits:
            row[f"{phase}_runq_wait"] = round(max(0.0, statistics.median(waits)), 3)
    if one_pass and infer:
        row["infer_one_pass_s"] = round(statistics.median(one_pass), 4)
        row["two_pass_ratio"] = round(row["infer_s"] / row["infer_one_pass_s"], 3)


def aggregate(cfg: dict, runs: list[dict], repeats: int) -> dict:
    """One row per configuration: timed steps pooled over repeats (median), memory peaks the max over repeats."""
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    row = dict.fromkeys(CSV_FIELDS)
    row.update(
        config=cfg["config"],
        model=cfg["model"],
        **_memory_columns(cfg["memory"]),
        batch=cfg["batch"],
        roi=roi_str(cfg["roi"]),
        device=cfg["device"],
        warmup=cfg["warmup"],
        steps=cfg["steps"],
        repeats=repeats,
        status=cfg.get("skip") or ("ok" if len(ok) == len(runs) else "; ".join(r.get("status", "ok") for r in runs)),
    )
    if not ok:
        return row
    first = ok[0]
    for key in ("device_name", "threads", "torch", "monai", "fused_attn", "tf32", "mem_method"):
        row[key] = first[key]
    for key in ("params", "params_tokens", "params_memory_norms", "params_memory_attn"):
        row[key] = first[key]
    B = cfg["batch"]
    row["params_m"] = round(first["params"] / 1e6, 3)
    row["gflops_fwd"] = round(first["gflops_fwd"], 3)
    row["gmacs_fwd"] = round(first["gflops_fwd"] / 2, 3)
    row["gflops_fwd_per_crop"] = round(first["gflops_fwd"] / B, 3)
    if "gflops_fwd_one_pass" in first:
        row["gflops_fwd_one_pass"] = round(first["gflops_fwd_one_pass"], 3)
    _pooled_times(row, ok, B)
    if "train_peak_mb" in first:
        row["train_peak_mb"] = max(r["train_peak_mb"] for r in ok)
        row["gflops_train_step"] = round(first["gflops_train_step"], 3)
    row["infer_peak_mb"] = max(r["infer_peak_mb"] for r in ok)
    row["mem_baseline_mb"] = max(r["mem_baseline_mb"] for r in ok)
    return row


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarize(rows: list[dict], preset: str, paired: dict[str, list[float]] | None = None) -> dict:
    """Ratios, and the design targets (DESIGN.md sections 1 and 4) as ``{"<ratio> <op> <bound>": value}``; with
    ``paired`` (the step times per mode from :func:`run_paired`) the time target also reads the paired steps: the
    median per-round ratio, with its interval and verdict under ``"paired full/none"``."""
    by = {r["config"]: r for r in rows if r["status"] == "ok"}
    none, full = by.get(f"fine_{preset}:none"), by.get(f"fine_{preset}:full")
    scan = by.get(f"fine_{preset}:full+scan")
    swin = next((r for r in by.values() if r["model"] == "swinunetr"), None)
    dyn = next((r for r in by.values() if r["model"] == "dynunet"), None)
    keys = ("train_s", "train_peak_mb", "infer_s", "infer_peak_mb", "params", "gflops_fwd", "gflops_train_step")
    out: dict = {}
    targets: dict = {}
    if none:
        for mode in ("window", "released", "full"):
            r = by.get(f"fine_{preset}:{mode}")
            if r:
                out[f"{mode}/none"] = {k: _ratio(r[k], none[k]) for k in keys}
                out[f"{mode} - none params"] = {
                    "total": r["params"] - none["params"],
                    "tokens": r["params_tokens"],
                    "layernorms": r["params_memory_norms"],
                    "own_attention": r["params_memory_attn"],
                }
    if paired and "full" in paired and "none" in paired:
        out["paired train_s"] = {m: round(statistics.median(t), 4) for m, t in paired.items()}
        pr = paired_ratio(paired)
        out["paired full/none"] = {
            **pr,
            "verdict": interval_verdict(pr["low"], pr["high"], float(PAIRED_KEY.split()[-1])),
        }
        targets[PAIRED_KEY] = pr["ratio"]
    if full and none:
        targets["full/none train_s <= 1.05"] = _ratio(full["train_s"], none["train_s"])
        targets["full/none train_peak_mb <= 1.04"] = _ratio(full["train_peak_mb"], none["train_peak_mb"])
    if full and swin:
        out["swinunetr/full"] = {k: _ratio(swin[k], full[k]) for k in keys}
        targets["swinunetr/full train_s >= 1.5"] = out["swinunetr/full"]["train_s"]
    if full and dyn:
        out["dynunet/full"] = {k: _ratio(dyn[k], full[k]) for k in keys}
    if scan and full:  # training iteration with scan memory (2 crops + their scan view) over one plain pass of 2 crops
        targets["scan/plain train_s per iteration <= 1.6"] = _ratio(scan["train_s_per_crop"], full["train_s"])
        out["scan per crop / full"] = {
            "train_s": _ratio(scan["train_s_per_crop"], full["train_s"]),
            "infer_s": _ratio(scan["infer_s_per_crop"], full["infer_s"]),
            "gflops_fwd": _ratio(scan["gflops_fwd_per_crop"], full["gflops_fwd"]),
            "train_peak_mb (B=2 vs B=1)": _ratio(scan["train_peak_mb"], full["train_peak_mb"]),
        }
    out["targets"] = targets
    waits = [r[k] for r in by.values() for k in ("train_runq_wait", "infer_runq_wait") if r.get(k) is not None]
    if waits and max(waits) > 0.05:
        out["warning"] = (
            f"the timed threads waited for a CPU up to {max(waits):.0%} of their time (runq_wait columns): other "
            "load shared the cores, so times are unreliable. Rerun on a quiet machine."
        )
    return out


GOALS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t}


def verdict(name: str, value) -> str:
    """``met``, ``MISSED`` or ``n/a`` for a target named ``"<ratio> <op> <bound>"``."""
    op, bound = name.split()[-2:]
    return "n/a" if value is None else ("met" if GOALS[op](value, float(bound)) else "MISSED")


def _target_verdict(summary: dict, name: str, value) -> str:
    """:func:`verdict`, but the paired time target is judged by its interval (``"paired full/none"``)."""
    pr = summary.get("paired full/none")
    if name == PAIRED_KEY and pr:
        return f"[{pr['low']}, {pr['high']}] over {pr['rounds']} rounds ({pr['coverage']:.0%}): {pr['verdict']}"
    return verdict(name, value)


def print_summary(summary: dict, rows: list[dict]) -> None:
    dev = next((r for r in rows if r["device_name"]), rows[0])
    print(f"\nSummary on {dev['device_name']} ({dev['device']}, {dev['threads']} threads), crop {dev['roi']}")
    print("  GFLOPs = FLOPs / 1e9 as torch's FlopCounterMode counts them (2 per multiply-add: GMACs = GFLOPs / 2);")
    print("  times are medians in seconds; peak = training-step memory in MiB (" + str(dev["mem_method"]) + ")")
    for r in rows:
        print(
            f"  {r['config']:<22} B={r['batch']}  params {r['params_m']} M  fwd {r['gflops_fwd']} GFLOPs "
            f"({r['gmacs_fwd']} GMACs)  train {r['train_s']} s  infer {r['infer_s']} s  "
            f"peak {r['train_peak_mb']} MiB  [{r['status']}]"
        )
    for name, value in summary.items():
        if isinstance(value, dict) and name != "targets":
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
    for name, value in summary["targets"].items():
        print(f"  target {name}: {value} -> {_target_verdict(summary, name, value)}")
    if "warning" in summary:
        print("  WARNING: " + summary["warning"])


def _cell(value) -> str:
    return "-" if value is None else str(value)


def sweep_markdown(rows: list[dict], summaries: dict[str, dict], preset: str, command: str) -> str:
    """The run as markdown: the targets per crop (memory's cost against ``none``, the peers against ``full``), then
    every configuration."""
    dev = next((r for r in rows if r["device_name"]), rows[0])
    lines = [
        f"# bench_network: {dev['device_name']} ({dev['device']}, {dev['threads']} threads)",
        "",
        f"torch {dev['torch']}, MONAI {dev['monai']}; memory: {dev['mem_method']}; command: `{command}`",
        "",
        "| crop | none train s | full train s | full/none time (<= 1.05) | paired none, full s (medians) | paired "
        "full/none time (<= 1.05): median per-round ratio [95 % interval] | none peak MiB | full peak MiB "
        "| full/none memory (<= 1.04) | SwinUNETR train s, peak MiB | DynUNet train s, peak MiB "
        "| SwinUNETR/full time | DynUNet/full time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for roi, summary in summaries.items():
        at = {r["model"] if r["model"] != "fine" else r["config"]: r for r in rows if r["roi"] == roi}
        none, full = at.get(f"fine_{preset}:none", {}), at.get(f"fine_{preset}:full", {})
        swin, dyn = at.get("swinunetr", {}), at.get("dynunet", {})
        t = summary["targets"]
        time_key, mem_key = "full/none train_s <= 1.05", "full/none train_peak_mb <= 1.04"
        pair_key, pair = PAIRED_KEY, summary.get("paired train_s", {})
        lines.append(
            f"| {roi} | {_cell(none.get('train_s'))} | {_cell(full.get('train_s'))} "
            f"| {_cell(t.get(time_key))} {verdict(time_key, t.get(time_key))} "
            f"| {_cell(pair.get('none'))}, {_cell(pair.get('full'))} "
            f"| {_cell(t.get(pair_key))} {_target_verdict(summary, pair_key, t.get(pair_key))} "
            f"| {_cell(none.get('train_peak_mb'))} | {_cell(full.get('train_peak_mb'))} "
            f"| {_cell(t.get(mem_key))} {verdict(mem_key, t.get(mem_key))} "
            f"| {_cell(swin.get('train_s'))}, {_cell(swin.get('train_peak_mb'))} "
            f"| {_cell(dyn.get('train_s'))}, {_cell(dyn.get('train_peak_mb'))} "
            f"| {_cell(summary.get('swinunetr/full', {}).get('train_s'))} "
            f"| {_cell(summary.get('dynunet/full', {}).get('train_s'))} |"
        )
    lines += [
        "",
        "| config | crop | batch | params M | fwd GFLOPs | train-step GFLOPs | train s (min-max) | train peak MiB "
        "| infer s | infer peak MiB | runq wait | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['roi']} | {r['batch']} | {_cell(r['params_m'])} | {_cell(r['gflops_fwd'])} "
            f"| {_cell(r['gflops_train_step'])} | {_cell(r['train_s'])} ({_cell(r['train_s_min'])}-"
            f"{_cell(r['train_s_max'])}) | {_cell(r['train_peak_mb'])} | {_cell(r['infer_s'])} "
            f"| {_cell(r['infer_peak_mb'])} | {_cell(r['train_runq_wait'])} | {r['status']} |"
        )
    warnings = [f"{roi}: {s['warning']}" for roi, s in summaries.items() if "warning" in s]
    return "\n".join(lines + [""] + [f"WARNING {w}" for w in warnings]) + "\n"
