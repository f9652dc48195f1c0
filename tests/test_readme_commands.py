"""Every command the README shows still exists as written: its module or script, each flag it
passes (checked against the command's own ``--help``), each ``--set`` key and each config file.

Commands a user copies from the README are the first thing that rots when a flag is renamed;
running them all for real costs minutes, asking each parser costs seconds.
"""
from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from clip4clip_dali.config import Config, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
OURS = re.compile(r"^(clip4clip_dali(\.\w+)*|(pipelines|benchmarks)/\w+\.py)$")


def readme_commands(text: str) -> list[str]:
    """Commands in fenced bash blocks (continuation lines joined) and in inline code spans."""
    out = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.strip() for line in joined.splitlines() if line.strip()]
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        out.append(span.strip())
    # inline spans may break over a line: join them
    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        if "\n" in span:
            out.append(" ".join(span.split()))
    return [c for c in out if re.search(r"(^|\s)(python|torchrun)\s", c + " ")]


def split_command(cmd: str) -> list[str] | None:
    """Tokens of one shell command after the target, or None for commands that are not ours."""
    cmd = cmd.split(" && ")[-1]
    try:
        tokens = shlex.split(cmd, comments=True)
    except ValueError:
        return None
    for i, tok in enumerate(tokens):
        if tok == "-m" and i + 1 < len(tokens) and OURS.match(tokens[i + 1]):
            return tokens[i + 1:]
        if OURS.match(tok) and i and tokens[i - 1] in ("python", "python3"):
            return tokens[i:]
    return None


_helps: dict[tuple[str, ...], str] = {}


def help_text(target: str, sub: tuple[str, ...] = ()) -> str:
    """What ``target [sub] --help`` prints, run in this process (no interpreter start-up)."""
    key = (target, *sub)
    if key not in _helps:
        out = io.StringIO()
        argv, path = sys.argv, list(sys.path)
        sys.argv = [target, *sub, "--help"]
        if target.endswith(".py"):  # as `python script.py` does: the script's folder first
            sys.path.insert(0, str((REPO / target).parent))
        try:
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
                if target.endswith(".py"):
                    runpy.run_path(str(REPO / target), run_name="__main__")
                else:
                    runpy.run_module(target, run_name="__main__", alter_sys=False)
        finally:
            sys.argv, sys.path[:] = argv, path
        _helps[key] = out.getvalue()
    return _helps[key]


def config_key_exists(path: list[str]) -> bool:
    node = Config()
    for part in path:
        if isinstance(node, dict):
            return True  # free-form mapping (e.g. model.open_clip_config)
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


COMMANDS = [c for c in readme_commands(README.read_text(encoding="utf-8"))
            if split_command(c) is not None]


def test_the_readme_shows_our_commands():
    targets = {split_command(c)[0] for c in COMMANDS}
    assert {"clip4clip_dali.train", "clip4clip_dali.evaluate", "clip4clip_dali.index",
            "clip4clip_dali.search", "clip4clip_dali.serve", "pipelines/make_shards.py",
            "benchmarks/throughput.py"} <= targets, targets


def check_command(cmd: str) -> None:
    target, *args = split_command(cmd)
    if target.endswith(".py"):
        assert (REPO / target).is_file(), f"README runs {target}, which does not exist"
    sub = tuple(args[:1]) if args and re.fullmatch(r"[a-z][a-z-]+", args[0]) and \
        re.search(r"\{[\w,-]*" + re.escape(args[0]), help_text(target)) else ()
    usage = help_text(target, sub)
    flags = {re.sub(r"[\[\]|]", "", t).split("=")[0] for t in args if t.lstrip("[").startswith("--")}
    for flag in sorted(f for f in flags if f):
        assert re.search(re.escape(flag) + r"\b", usage), \
            f"README: `{cmd}` passes {flag}, which {target} does not take:\n{usage}"
    config, sets = None, []
    for tok, value in zip(args, args[1:]):
        if tok == "--set":
            key, _ = parse_override(value)
            assert config_key_exists(key), f"README: `{cmd}` sets {'.'.join(key)}, no such key"
            sets.append(value)
        if tok == "--config" and value.startswith("configs/"):
            config = REPO / value
    if config is not None:
        load_config(config, sets)  # the file exists, and the values have the right types


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command_matches_its_parser(cmd):
    check_command(cmd)


@pytest.mark.parametrize("cmd, wrong", [
    ("python -m clip4clip_dali.search --index runs/demo/index 'a cat' --topk 5", "--topk"),
    ("python -m clip4clip_dali.train --config configs/demo.yaml --set train.epoch=2", "train.epoch"),
    ("python -m clip4clip_dali.train --config configs/demo.yaml --set train.epochs=two", "epochs"),
    ("python -m clip4clip_dali.train --config configs/no_such.yaml", "no_such.yaml"),
    ("python pipelines/no_such.py --out x", "no_such.py"),
])
def test_a_stale_command_is_caught(cmd, wrong):
    with pytest.raises((AssertionError, ValueError)) as e:
        check_command(cmd)
    assert wrong in str(e.value)
