# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``monai-fine <command>`` (or ``python -m monai_fine <command>``): the command table and its argument parsing.

Three kinds of command, one ``argparse`` parser each (``monai-fine --help`` lists them, ``monai-fine <command>
--help`` shows a command's options):

* **functions** (``phantom``, ``datalist``, ``check``, ``demo``, ``memory_map``, ``package_bundle``): one option per
  parameter, built from the signature and the docstring's ``Args`` (:func:`add_signature_options`). Both
  ``--num_cases`` and ``--num-cases`` are accepted; a ``bool`` is a flag (``--check``, ``--check false``,
  ``--nocheck``); values are read as Python literals where the parameter is not a string (``--shape '[48,48,32]'``,
  ``--center 256,250,60``, ``--val_interval None``); parameters may also be given positionally, in order
  (``check path/dataset_0.json``).
* **bundle commands** (``train``, ``evaluate``, ``infer``, ``verify``): any bundle id as an override,
  ``--<id> <value>`` or ``--<id>=<value>`` (``--max_epochs 5``, ``--network_def#feature_size 12``), values read by
  :func:`parse_value` (:func:`parse_overrides`).
* **experiments** (``context_ablation``, ``context_benchmark``, ``memory_probe``): their own ``argparse`` parsers
  (:py:mod:`monai_fine.experiments`) get the remaining arguments.

Values are read as Python Fire (this CLI's former framework) read them, so every documented command line keeps its
meaning.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import io
import os
import re
import sys
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai_fine.bools import as_bool
from monai_fine.bundle_tools import evaluate, infer, package_bundle, train, verify
from monai_fine.data.checks import check
from monai_fine.data.datalist import datalist
from monai_fine.data.phantom import phantom
from monai_fine.demo import demo
from monai_fine.memory_map import memory_map_png

__all__ = [
    "COMMANDS", "BUNDLE_COMMANDS", "ARGV_COMMANDS", "main", "parse_command", "build_parser", "parse_value",
    "parse_overrides",
    "add_signature_options", "signature_kwargs",
]  # fmt: skip

COMMANDS: dict[str, Callable[..., Any]] = {
    "phantom": phantom,
    "datalist": datalist,
    "check": check,
    "train": train,
    "evaluate": evaluate,
    "infer": infer,
    "verify": verify,
    "demo": demo,
    "memory_map": memory_map_png,
    "package_bundle": package_bundle,
}
"""Commands that run a function: its keyword arguments come from the command line."""

BUNDLE_COMMANDS: dict[str, Sequence[str]] = {
    "train": ["train.json"],
    "evaluate": ["train.json", "evaluate.json"],
    "infer": ["inference.json"],
    "verify": ["inference.json"],
}
"""Commands of :data:`COMMANDS` that take bundle overrides (``**override``), with the configs whose ids they take."""

ARGV_COMMANDS: dict[str, tuple[str, str]] = {
    "context_ablation": (
        "monai_fine.experiments.context_ablation",
        "The paper's token ablation (none / window / released / full / full+scan under one budget).",
    ),
    "context_benchmark": (
        "monai_fine.experiments.context_benchmark",
        "Context-only task (labels only content outside every window decides): none / full / full+scan over seeds.",
    ),
    "memory_probe": (
        "monai_fine.experiments.memory_probe",
        "Is the trained memory used? Evaluate a trained FINE with parts of its memory switched off.",
    ),
}
"""Commands that parse their own options: ``(module whose main(argv) gets the arguments, one-line summary)``."""


# ------------------------------------------------------------------------------------------------------ values
class _BareWords(ast.NodeTransformer):
    """Names in a literal are the strings they spell (``[a,b]`` -> ``['a', 'b']``)."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(ast.Constant(node.id), node)


def _has_comment(text: str) -> bool:
    if "#" not in text:
        return False
    try:
        return any(t.type == tokenize.COMMENT for t in tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return False


def parse_value(text: str) -> Any:
    """A command-line value as Python Fire read it: the Python literal it spells, else the text itself.

    ``5``, ``-1``, ``2e-3``, ``[32,32,16]``, ``256,250,60`` (a tuple), ``True``/``False``/``None`` and
    ``{'a': 1}`` are literals; bare words inside a literal are strings (``[a,b]`` -> ``['a', 'b']``,
    ``none,full`` -> ``('none', 'full')``). Everything else stays text: words (``true``/``false`` too: the bundle
    and the commands read booleans with :func:`monai_fine.bools.as_bool`), paths, ``$`` expressions and ``@``
    references, and expressions with an operator (``1-2``). One deliberate difference from Fire: text holding a
    Python comment (``run#1``) stays text instead of being cut at the ``#``.

    Args:
        text: one command-line value.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a NUL character
        return text
    if isinstance(tree.body, ast.BinOp) or _has_comment(text):
        return text
    tree = ast.fix_missing_locations(_BareWords().visit(tree))
    try:
        return ast.literal_eval(tree)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def _is_flag(token: str) -> bool:
    """``--x`` or ``-x`` (Fire's rule: a negative number such as ``-1`` is a value)."""
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Bundle id overrides from ``--<id> <value>`` / ``--<id>=<value>`` arguments, as Python Fire read them.

    Ids may hold ``#`` (``--network_def#feature_size 12``); ``-`` in an id is read as ``_`` (``--num-workers``).
    A ``--<id>`` followed by another option or by nothing is ``True``, a ``--no<id>`` so placed ``False``; values
    are read by :func:`parse_value`; a repeated id keeps its last value.

    Args:
        args: the command-line arguments after the command name.

    Raises:
        ValueError: an argument that is not an override (a positional value, an empty id), naming it.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not _is_flag(token):
            raise ValueError(
                f"unexpected argument {token!r}: bundle commands take only overrides --<id> <value> or --<id>=<value>."
            )
        key, sep, text = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not key:
            raise ValueError(f"option {token!r} has no bundle id: write --<id> <value> or --<id>=<value>.")
        if sep:
            value = parse_value(text)
        elif i + 1 == len(args) or _is_flag(args[i + 1]):
            value = True
            if key.startswith("no") and len(key) > 2:  # Fire: --noX is X=False
                key, value = key[2:], False
        else:
            i += 1
            value = parse_value(args[i])
        out[key] = value
        i += 1
    return out


# ------------------------------------------------------------------------------------------- signature options
def _plain(text: str) -> str:
    """Docstring text without its reST markup (``:py:mod:`x``` and ````x```` -> ``x``), for the terminal."""
    return re.sub(r"(?::[a-z]+)+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _doc_parts(function: Callable) -> tuple[str, dict[str, str]]:
    """``(description, {parameter: help})`` from a Google-style docstring (``Args:`` entries; ``a, b: text`` is
    the help of both), reST markup removed."""
    doc = _plain(inspect.getdoc(function) or "")
    description: list[str] = []
    helps: dict[str, str] = {}
    section = None
    current: list[str] = []
    for line in doc.splitlines():
        header = re.match(r"^([A-Z][A-Za-z ]*):\s*$", line)
        if header:
            section, current = header.group(1), []
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            entry = re.match(r"^ {4}(?! )([A-Za-z_][\w ,]*?):\s*(.*)$", line)
            if entry:
                current = [n.strip() for n in entry.group(1).split(",")]
                for name in current:
                    helps[name] = entry.group(2).strip()
            elif line.strip():
                for name in current:
                    helps[name] = f"{helps[name]} {line.strip()}".strip()
    return "\n".join(description).strip(), helps


def _members(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a ``Union``/``X | Y`` hint (``None`` dropped); ``(hint,)`` for any other."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def _kind(hint: Any) -> str:
    """``"str"`` (text kept as typed), ``"bool"``, ``"int"``, ``"float"`` or ``"literal"`` (:func:`parse_value`)."""
    members = _members(hint)
    if all(m in (str, Path, os.PathLike) for m in members):
        return "str"
    if len(members) == 1 and members[0] in (bool, int, float):
        return members[0].__name__
    return "literal"


def _converter(option: str, kind: str) -> Callable[[str], Any]:
    """The ``argparse`` type of an option: text -> value, ``None`` for ``None``, an error naming ``option``."""

    def convert(text: str) -> Any:
        value = parse_value(text)
        if value is None:  # as Fire: `--val_interval None`, `--test_images None`
            return None
        if kind == "str":
            return text
        if kind == "bool":
            try:
                return as_bool(value, option)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise argparse.ArgumentTypeError(f"{option} must be an integer, got {text!r}.")
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise argparse.ArgumentTypeError(f"{option} must be a number, got {text!r}.")
            return float(value)
        return value

    convert.__name__ = kind
    return convert


def _parameters(function: Callable) -> list[inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p for p in inspect.signature(function).parameters.values() if p.kind in kinds]


def _hints(function: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: its values are read as literals
        return {}


def add_signature_options(parser: argparse.ArgumentParser, function: Callable) -> None:
    """Add to ``parser`` one option per parameter of ``function``, and the positional values.

    ``--name`` and (for a name with ``_``) ``--name-with-dashes``; the help is the docstring's ``Args`` entry and the
    default. A ``bool`` parameter is a flag taking an optional value (``--x``, ``--x false``) with ``--nox`` for
    ``False``. Unset options are absent from the parsed namespace (the function's default applies); the positional
    values fill, in order, the parameters not given as options (:func:`signature_kwargs`).

    Args:
        parser: the command's parser.
        function: the command's function.
    """
    _, helps = _doc_parts(function)
    hints = _hints(function)
    params = _parameters(function)
    for p in params:
        kind = _kind(hints.get(p.name, Any))
        names = [f"--{p.name}"] + ([f"--{p.name.replace('_', '-')}"] if "_" in p.name else [])
        text = helps.get(p.name, "")
        text += " (required)" if p.default is p.empty else f" (default: {p.default!r})"
        extra: dict[str, Any] = {"nargs": "?", "const": True} if kind == "bool" else {}
        parser.add_argument(
            *names, dest=p.name, default=argparse.SUPPRESS, type=_converter(names[0], kind),
            metavar="BOOL" if kind == "bool" else p.name.upper(), help=text.strip().replace("%", "%%"), **extra,
        )  # fmt: skip
        if kind == "bool":
            negated = [f"--no{n[2:]}" for n in names]
            parser.add_argument(*negated, dest=p.name, action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)  # fmt: skip
    order = ", ".join(p.name for p in params)
    parser.add_argument(
        "_positional", nargs="*", metavar="VALUE",
        help=f"values of the parameters not given as options, in this order: {order}",
    )  # fmt: skip


def signature_kwargs(
    parser: argparse.ArgumentParser, function: Callable, namespace: argparse.Namespace
) -> dict[str, Any]:
    """The keyword arguments of ``function`` from a namespace parsed with :func:`add_signature_options`.

    Raises:
        SystemExit: through ``parser.error``, naming the values left over or the required parameters missing.
    """
    given = {k: v for k, v in vars(namespace).items() if k != "_positional"}
    free = [p for p in _parameters(function) if p.name not in given]
    values = list(namespace._positional)
    if len(values) > len(free):
        parser.error(f"unrecognized arguments: {' '.join(values[len(free) :])}")
    hints = _hints(function)
    for p, text in zip(free, values):
        option = f"--{p.name}"
        try:
            given[p.name] = _converter(option, _kind(hints.get(p.name, Any)))(text)
        except argparse.ArgumentTypeError as e:
            parser.error(f"argument {p.name} (positional): {e}")
    missing = [p.name for p in _parameters(function) if p.default is p.empty and p.name not in given]
    if missing:
        parser.error(
            "the following arguments are required: " + ", ".join(f"{m} (--{m} or positional)" for m in missing)
        )
    return given


# -------------------------------------------------------------------------------------------------------- parser
def _bundle_epilog(configs: Sequence[str]) -> str:
    return (
        f"Overrides: any id of bundle/configs/{' + '.join(configs)} as --<id> <value> or --<id>=<value> (ids may hold "
        "'#': --network_def#feature_size 12). Values are Python literals when they are one (5, 2e-3, [32,32,16], "
        "True, None), else text (paths, words, $expressions); a --<id> without a value is True, --no<id> False. "
        "Booleans such as --resume false are read by the bundle (monai_fine.bools.as_bool)."
    )


def build_parser(prog: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one sub-parser per command (experiments: a stub for the listing; their own parser
    parses their arguments).

    Args:
        prog: the program name in the usage lines (default ``monai-fine``).
    """
    prog = prog or "monai-fine"
    from monai_fine import __version__

    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="FINE for MONAI: data tools, the MONAI bundle's workflows, the demo and the experiments.",
        epilog=f"`{prog} <command> --help` shows a command's options.",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"monai_fine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    subs: dict[str, argparse.ArgumentParser] = {}
    for name, function in COMMANDS.items():
        description, _ = _doc_parts(function)
        summary = re.split(r"\.\s+(?=[A-Z])", description.split("\n\n")[0].replace("\n", " "))[0]
        summary = summary.rstrip(".") + "."
        kwargs: dict[str, Any] = {
            "help": summary.replace("%", "%%"), "description": description, "allow_abbrev": False,
            "formatter_class": argparse.RawDescriptionHelpFormatter,
        }  # fmt: skip
        if name in BUNDLE_COMMANDS:
            kwargs.update(
                usage=f"{prog} {name} [-h] [--<id> VALUE | --<id>=VALUE ...]",
                epilog=_bundle_epilog(BUNDLE_COMMANDS[name]),
            )
        sub = subparsers.add_parser(name, **kwargs)
        if name not in BUNDLE_COMMANDS:
            add_signature_options(sub, function)
        subs[name] = sub
    for name, (_module, summary) in ARGV_COMMANDS.items():
        subs[name] = subparsers.add_parser(
            name, help=summary, add_help=False, description=f"{summary} Options: `{prog} {name} --help`."
        )
    return parser, subs


def parse_command(argv: Sequence[str], prog: str | None = None) -> tuple[str, Callable[..., Any], dict[str, Any]]:
    """What a command line asks for, without running it: ``(command, function, keyword arguments)``.

    For an experiment the function is its module's ``main`` and the keyword arguments ``{"argv": [...]}``.

    Args:
        argv: the arguments after the program name, the command first.
        prog: the program name in help and errors (default: ``monai-fine``).

    Raises:
        SystemExit: for ``--help`` (status 0) and for a bad command line (status 2, the message naming the unknown
            command, option or value), through ``argparse``.
    """
    args = list(argv)
    parser, subs = build_parser(prog)
    if not args or args[0] not in subs:
        parser.parse_args(args[:1])  # --help / --version, or an error naming the unknown (or missing) command
        parser.error(f"unexpected arguments: {' '.join(args)}")
    name, rest = args[0], args[1:]
    if name in ARGV_COMMANDS:
        return name, importlib.import_module(ARGV_COMMANDS[name][0]).main, {"argv": rest}
    sub, function = subs[name], COMMANDS[name]
    if name not in BUNDLE_COMMANDS:
        return name, function, signature_kwargs(sub, function, sub.parse_intermixed_args(_join_dash_values(sub, rest)))
    if any(a in ("-h", "--help") for a in rest):
        sub.print_help()
        sub.exit(0)
    try:
        return name, function, parse_overrides(rest)
    except ValueError as e:
        sub.error(str(e))
        raise  # not reached: error() exits


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one command: the console script ``monai-fine`` and ``python -m monai_fine``.

    Prints the command's result when it returns one (a summary line, a path), as the former Fire CLI did; with no
    arguments, prints the list of commands.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).
        prog: the program name in help and errors (default: ``monai-fine``).

    Returns:
        the exit status, 0 (a bad command line exits with status 2 through ``argparse``; a failing command raises).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        build_parser(prog)[0].print_help()
        return 0
    name, function, kwargs = parse_command(args, prog)
    result = function(**kwargs)
    if result is not None and name not in ARGV_COMMANDS:
        print(result)
    return 0


def _join_dash_values(parser: argparse.ArgumentParser, args: Sequence[str]) -> list[str]:
    """``--opt -1,2`` -> ``--opt=-1,2``: a value starting with ``-`` that is not an option (Fire's rule) stays the
    option's value, which ``argparse`` would otherwise take for an option."""
    takes_value = {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if token in takes_value and nxt is not None and nxt.startswith("-") and not _is_flag(nxt):
            out.append(f"{token}={nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out
