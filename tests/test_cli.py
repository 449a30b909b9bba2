# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The command line (``monai-fine`` / ``python -m monai_fine``): every documented command line parses to the call the
former Python Fire CLI made (Fire, where installed, is the reference), help and errors name what they are about."""

from __future__ import annotations

import csv
import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_fine import cli
from monai_fine.bools import as_bool
from monai_fine.bundle_tools import verify
from monai_fine.demo import demo

REPO = Path(__file__).resolve().parents[1]

# documented command lines (README.md, docs/, bundle/docs/README.md, docstrings, tests) -> the call they make
DOCUMENTED = [
    ("phantom --out data/phantom --num-cases 12 --seed 0", {"out": "data/phantom", "num_cases": 12, "seed": 0}),
    ("phantom /tmp/ecob/demo --num_cases 7 --num_test 1 --shape '[48,48,32]' --spacing '[4.0,4.0,4.0]'",
     {"out": "/tmp/ecob/demo", "num_cases": 7, "num_test": 1, "shape": [48, 48, 32], "spacing": [4.0, 4.0, 4.0]}),
    ("datalist --data-dir /data/btcv --val-cases 39,40 --check",
     {"data_dir": "/data/btcv", "val_cases": (39, 40), "check": True}),
    ("datalist /data/btcv --val-cases 2", {"data_dir": "/data/btcv", "val_cases": 2}),
    ("check /data/btcv/dataset_0.json", {"datalist": "/data/btcv/dataset_0.json"}),
    ("check --datalist /data/btcv/dataset_0.json --keys training,validation,test",
     {"datalist": "/data/btcv/dataset_0.json", "keys": ("training", "validation", "test")}),
    ("demo --out fine_demo --num_workers 2", {"out": "fine_demo", "num_workers": 2}),
    ("demo --shape [48,48,32] --roi_size [32,32,16] --scan_memory --val_interval None --device cuda:0",
     {"shape": [48, 48, 32], "roi_size": [32, 32, 16], "scan_memory": True, "val_interval": None, "device": "cuda:0"}),
    ("demo --scan_memory false --learning_rate 2e-3", {"scan_memory": False, "learning_rate": 0.002}),
    ("memory_map --image CT.nii.gz --weights models/model.pt --center 256,250,60 --out map.png",
     {"image": "CT.nii.gz", "weights": "models/model.pt", "center": (256, 250, 60), "out": "map.png"}),
    ("package_bundle --out /work/ext/zip --weights m.pt", {"out": "/work/ext/zip", "weights": "m.pt"}),
    ("train --dataset_dir /data/btcv --preset bcv", {"dataset_dir": "/data/btcv", "preset": "bcv"}),
    (("train --dataset_dir /d --preset tiny --roi_size [32,32,16] --network_def#feature_size 12 "
      "--network_def#num_heads [1,2,2,4] --max_epochs=2 --resume false --sw_progress True --num-workers 0"),
     {"dataset_dir": "/d", "preset": "tiny", "roi_size": [32, 32, 16], "network_def#feature_size": 12,
      "network_def#num_heads": [1, 2, 2, 4], "max_epochs": 2, "resume": "false", "sw_progress": True,
      "num_workers": 0}),
    ("evaluate --eval_split test --save_predictions", {"eval_split": "test", "save_predictions": True}),
    (("evaluate --bundle_root fine_demo --dataset_dir fine_demo/data --pixdim \"[3.0,3.0,3.0]\" --preset tiny "
      "--roi_size \"[32,32,16]\" --output_dir fine_demo/eval_raw --keep_largest_component false"),
     {"bundle_root": "fine_demo", "dataset_dir": "fine_demo/data", "pixdim": [3.0, 3.0, 3.0], "preset": "tiny",
      "roi_size": [32, 32, 16], "output_dir": "fine_demo/eval_raw", "keep_largest_component": "false"}),
    ("demo --keep_largest_component false", {"keep_largest_component": False}),
    ("infer --output_dir /o --load_pretrain 'no way' --noamp",
     {"output_dir": "/o", "load_pretrain": "no way", "amp": False}),
    ("verify --preset tiny", {"preset": "tiny"}),
]  # fmt: skip


@pytest.mark.parametrize("line, expected", DOCUMENTED, ids=[d[0][:40] for d in DOCUMENTED])
def test_documented_command_lines_make_the_documented_call(line, expected):
    name, function, kwargs = cli.parse_command(shlex.split(line))
    assert function is cli.COMMANDS[name] and kwargs == expected


def _fire_call(function, args: list[str]) -> dict:
    """The keyword arguments Python Fire gave ``function`` for ``args`` (a stand-in of the same signature)."""
    fire = pytest.importorskip("fire")
    sig = inspect.signature(function)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fire.Fire(lambda **kw: kw, command=args)
    unset = object()  # the stand-in's default: tells the arguments Fire gave from the others
    params = ", ".join(n if p.default is p.empty else f"{n}=_unset" for n, p in sig.parameters.items())
    space: dict = {}
    exec(f"def stand_in({params}):\n    return dict(locals())", {"_unset": unset}, space)
    return {k: v for k, v in fire.Fire(space["stand_in"], command=args).items() if v is not unset}


@pytest.mark.parametrize("line, expected", DOCUMENTED, ids=[d[0][:40] for d in DOCUMENTED])
def test_documented_command_lines_parse_as_fire_parsed_them(line, expected):
    """Fire's values, except where a parameter's type says more: a bool reads ``false`` as False (Fire passed the
    string on, which the commands then read with ``as_bool``), a ``str`` keeps its text."""
    args = shlex.split(line)
    _, function, kwargs = cli.parse_command(args)
    fire_kwargs = _fire_call(function, args[1:])
    hints = cli._hints(function)
    for key in fire_kwargs:
        if hints.get(key) is bool:
            fire_kwargs[key] = as_bool(fire_kwargs[key], key)
    assert kwargs == fire_kwargs


VALUES = [
    "5", "-1", "2e-3", "0.5", "[32,32,16]", "256,250,60", "(1, 2)", "True", "False", "None", "true", "false", "no way",
    "/data/btcv", "cuda:0", "$torch.device('cuda:0')", "$@bundle_root + '/eval'", "@network_def", "[a,b]",
    "none,full+scan", "none,full", "{'a': 1, 'b': [x]}", "1-2", "abc", "'quoted'", "", "[1, [2, 3]]", "-0.5", "a.b",
    "f(1)", "1e5", "[1,-2]",
]  # fmt: skip


@pytest.mark.parametrize("text", VALUES)
def test_values_are_read_as_fire_read_them(text):
    fire_parser = pytest.importorskip("fire.parser")
    assert cli.parse_value(text) == fire_parser.DefaultParseValue(text)
    assert type(cli.parse_value(text)) is type(fire_parser.DefaultParseValue(text))


def test_values_independently_of_fire():
    assert cli.parse_value("[48,48,32]") == [48, 48, 32] and cli.parse_value("39,40") == (39, 40)
    assert cli.parse_value("none,full") == ("none", "full") and cli.parse_value("[a,b]") == ["a", "b"]
    assert cli.parse_value("True") is True and cli.parse_value("None") is None and cli.parse_value("false") == "false"
    assert cli.parse_value("$torch.device('cpu')") == "$torch.device('cpu')" and cli.parse_value("1-2") == "1-2"
    assert cli.parse_value("run#1") == "run#1"  # Fire would cut at the comment: 'run'


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--a", "1", "--b=2", "--c"], {"a": 1, "b": 2, "c": True}),
        (["--flag", "--noamp", "--x", "-3"], {"flag": True, "amp": False, "x": -3}),
        (["--network_def#num_heads=[1,2,2,4]", "--num-workers", "0"],
         {"network_def#num_heads": [1, 2, 2, 4], "num_workers": 0}),
        (["--a", "1", "--a", "2", "--device", "$torch.device('cpu')"], {"a": 2, "device": "$torch.device('cpu')"}),
    ],
)  # fmt: skip
def test_bundle_overrides_as_fire(args, expected):
    assert cli.parse_overrides(args) == expected
    assert cli.parse_overrides(args) == _fire_call(cli.COMMANDS["train"], args)


def test_help_lists_every_command_with_a_summary(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"], prog="python -m monai_fine")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m monai_fine")
    for name in [*cli.COMMANDS, *cli.ARGV_COMMANDS]:
        line = re.search(rf"^    {name}\s*\n?\s+(\S.*)$", out, re.MULTILINE)
        assert line and len(line.group(1)) > 10, (name, out)
    assert "Check the data of a datalist before training" in out
    assert cli.main([], prog="x") == 0 and "<command>" in capsys.readouterr().out


def test_demo_help_shows_the_options_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, _p in inspect.signature(demo).parameters.items():
        assert f"--{name}" in out, name
    flat = " ".join(out.split())
    assert "--num_cases NUM_CASES, --num-cases NUM_CASES labelled phantom cases (20 % held out" in flat
    assert "(default: 24)" in flat and "(default: (32, 32, 16))" in flat and "(default: 'fine_demo')" in flat


def test_bundle_command_help_explains_the_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "--<id> <value> or --<id>=<value>" in flat and "train.json" in flat


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--num_casez", "3"], "unrecognized arguments: --num_casez"),
        (["demoo"], "invalid choice: 'demoo'"),
        (["demo", "--num_cases", "x"], "--num_cases must be an integer, got 'x'"),
        (["demo", "--learning_rate", "fast"], "--learning_rate must be a number, got 'fast'"),
        (["demo", "--scan_memory", "maybe"], "--scan_memory must be a boolean"),
        (["phantom", "--num_cases", "3"], "the following arguments are required: out"),
        (["check", "a.json", "b", "c", "4", "True", "extra"], "unrecognized arguments: extra"),
        (["train", "stray"], "unexpected argument 'stray'"),
    ],
)  # fmt: skip
def test_bad_command_lines_are_refused_naming_the_culprit(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_command(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_value_starting_with_a_dash_is_a_value():
    _, _, kwargs = cli.parse_command(["memory_map", "--image", "a", "--weights", "b", "--center", "-1,2,3"])
    assert kwargs["center"] == (-1, 2, 3)


def test_experiments_get_the_remaining_arguments_unparsed():
    from monai_fine.experiments import context_benchmark

    args = ["--out", "runs/x", "--configs", "none,full+scan", "--seeds", "0,1,2", "--jobs", "2"]
    _, function, kwargs = cli.parse_command(["context_benchmark", *args])
    assert function is context_benchmark.main and kwargs == {"argv": args}


def test_main_prints_the_result_and_returns_0(tmp_path, capsys):
    out = tmp_path / "ph"
    assert cli.main(["phantom", str(out), "--num-cases", "2", "--num_test", "0", "--shape", "[32,32,24]"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == str(out / "dataset_0.json") and Path(printed).is_file()


def test_console_script_is_the_cli_main():
    """``[project.scripts] monai-fine`` names :func:`monai_fine.cli.main`, and ``python -m monai_fine`` calls it; the
    script itself (installed by ``pip install -e .``) is run here as the wrapper pip writes would run it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["monai-fine"].partition(":")
    assert (module, attr) == ("monai_fine.cli", "main")
    # Fire is a dependency for MONAI's bundle CLI only: no module of monai_fine imports it
    fire_users = [
        p.name
        for p in (REPO / "monai_fine").rglob("*.py")
        if re.search(r"^\s*(import|from) fire\b", p.read_text(), re.M)
    ]
    assert not fire_users, fire_users
    wrapper = f"import sys; from {module} import {attr}; sys.argv[0] = 'monai-fine'; sys.exit({attr}())"
    res = subprocess.run([sys.executable, "-c", wrapper, "demo", "--help"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("usage: monai-fine demo"), res.stderr[-2000:]


def test_phantom_command_from_the_command_line(tmp_path):
    out = tmp_path / "ph"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai_fine",
            "phantom",
            "--out",
            str(out),
            "--num-cases",
            "3",
            "--seed",
            "5",
            "--shape",
            "[48,48,32]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == str(out / "dataset_0.json")  # the result is printed
    datalist = json.loads((out / "dataset_0.json").read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 3 and len(datalist["test"]) == 2
    img = nib.load(out / datalist["training"][0]["image"])
    assert img.shape == (48, 48, 32) and nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_check_command_names_the_bad_file(tmp_path):
    out = tmp_path / "ph"
    subprocess.run(
        [sys.executable, "-m", "monai_fine", "phantom", "--out", str(out), "--num-cases", "2", "--shape", "[32,32,24]"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    datalist = json.loads((out / "dataset_0.json").read_text())
    bad = out / datalist["training"][0]["image"]
    img = nib.load(bad)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    res = subprocess.run(
        [sys.executable, "-m", "monai_fine", "check", str(out / "dataset_0.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0 and bad.name in res.stderr and "NaN" in res.stderr


def test_verify():
    assert "passed" in verify(preset="tiny")


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_demo_refuses_a_bad_sliding_window_batch_before_writing_anything(tmp_path, bad):
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=f"sw_batch_size must be a positive integer.*got {bad!r}"):
        demo(out=str(out), sw_batch_size=bad)
    assert not out.exists()


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    """The README's main job on a minimal budget: phantom -> train -> evaluate -> infer -> table, CSV, PNG."""
    out = tmp_path / "demo"
    summary = demo(
        out=str(out),
        num_cases=4,
        max_epochs=1,
        epoch_length=2,
        num_workers=0,
        shape=(48, 48, 32),
        roi_size=(32, 32, 16),
    )
    assert summary.startswith("mean Dice")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == list(range(1, 14))
    png = (out / "overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    png = (out / "training.png").read_bytes()  # one epoch of two iterations, validated once
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    test_images = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))
    for image in test_images:
        seg = nib.load(out / "predictions" / image.name.replace(".nii.gz", "_seg.nii.gz"))
        assert seg.shape == nib.load(image).shape
