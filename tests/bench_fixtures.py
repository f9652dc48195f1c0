"""The benchmark runs several test files assert on, made once a test session in one process.

``throughput.py --quick`` (test_benchmark.py), the 3 fps + pre-sampled sets run and the same
run again on its cache (test_benchmark_sets.py), the decoders section's CPU dry run
(test_decoders_bench.py) and ``dali_stages.py``'s profile (test_dali_stages.py) are queued for
``benchmarks/run_queued.py`` (the driver of ``gpu_all.sh --device cpu``): one start-up of the
interpreter, torch and DALI instead of one a run. Each run keeps its own output, log and exit
status, so a failing run fails only the tests that read it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT = REPO / "benchmarks" / "throughput.py"
GPU_DECODERS = ["torchcodec_cuda", "pynvc", "dali_nvdec"]
DECODERS = GPU_DECODERS + ["torchcodec", "pyav", "dali_cpu", "opencv"]


@dataclass
class Run:
    args: list[str]
    rc: int
    log: str

    def flag(self, name: str) -> str:
        return self.args[self.args.index(name) + 1]

    @property
    def out(self) -> Path:
        return Path(self.flag("--out"))

    @property
    def cache(self) -> Path:
        return Path(self.flag("--cache-dir"))

    def doc(self) -> dict:
        """throughput.py's JSON document."""
        return json.loads((self.out / f"{self.flag('--name')}.json").read_text())

    def check(self) -> None:
        assert self.rc == 0, self.log[-5000:]


def _runs(root: Path) -> dict[str, list[str]]:
    sets = ["--sections", "loader", "--device", "cpu", "--loaders", "dali_cpu",
            "--prepare", "3fps,presampled", "--codecs", "vp9", "--videos", "6",
            "--clip-size", "96x72", "--clip-seconds", "2", "5", "--max-frames", "4",
            "--resolution", "32", "--loader-batch", "1", "--min-batches", "4", "--repeats", "1",
            "--min-repeat-seconds", "0", "--interleave", "--cache-dir", str(root / "sets-cache"),
            "--out", str(root / "sets"), "--name", "sets"]
    return {
        "quick": ["--quick", "--device", "cpu", "--cache-dir", str(root / "quick-cache"),
                  "--out", str(root / "quick"), "--name", "quick"],
        "sets": sets,
        "sets_again": sets[:-4] + ["--out", str(root / "sets_again"), "--name", "sets"],
        "decoders": [
            "--device", "cpu", "--sections", "decoders", "--out", str(root / "decoders"),
            "--name", "dry", "--cache-dir", str(root / "decoders-cache"), "--codecs", "h264",
            "--videos", "3", "--clip-size", "96x72", "--clip-fps", "10", "--clip-seconds", "1",
            "2", "--max-frames", "4", "--resolution", "32", "--prepare", "raw,3fps,presampled",
            "--prepare-codec", "vp9", "--decoders", ",".join(DECODERS),
            "--decoder-gpu-threads", "1,4,8,16", "--workers", "0", "--decoder-batch", "2",
            "--decoder-min-batches", "2", "--decoder-repeats", "1", "--decoder-budget", "20"],
    }


def run_queue(root: Path, commands: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """{name: (exit status, output)} of each command, run in turn by benchmarks/run_queued.py in
    one process (its Python commands in it)."""
    queue = root / "queue"
    with open(queue, "wb") as f:
        for name, argv in commands.items():
            f.write(b"".join(x.encode() + b"\0" for x in [name, str(len(argv)), *argv]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_queued.py"), str(queue),
                        str(root / "run-")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    out = {}
    for name in commands:
        rc_file, log = root / f"run-{name}.rc", root / f"run-{name}.log"
        rc = int(rc_file.read_text()) if rc_file.exists() else -1
        out[name] = (rc, log.read_text() if log.exists() else p.stdout[-3000:] + p.stderr[-3000:])
    return out


def stage_clips(root: Path) -> Path:
    """Two clips dali_stages.py profiles: VP9 and MJPEG (what DALI decodes on a CPU)."""
    from dali_fixtures import make_dataset

    _, videos = make_dataset(root, [dict(frames=30, fps=10, codec="vp9"),
                                    dict(frames=20, fps=10, codec="mjpeg", width=48, height=64)])
    return videos


def run_in_one_process(root: Path, runs: dict[str, list[str]]) -> dict[str, Run]:
    """{name: Run} of throughput.py runs, plus "dali_stages" (its --out is a JSON file) and
    "dali_stages_h264" (a folder with nothing DALI decodes on a CPU)."""
    from dali_fixtures import smooth_clip

    commands = {name: [sys.executable, str(THROUGHPUT), *args] for name, args in runs.items()}
    commands["dali_stages"] = [sys.executable, str(REPO / "benchmarks" / "dali_stages.py"),
                               "--features-path", str(stage_clips(root / "stage_clips")),
                               "--resolution", "32", "--batch", "2", "--threads", "1",
                               "--seconds", "0.2", "--out", str(root / "stages.json")]
    h264 = root / "h264_only"  # a clip DALI's CPU decoder cannot read, and a note
    h264.mkdir()
    smooth_clip(h264 / "clip.mp4", frames=10, codec="h264")
    (h264 / "notes.txt").write_text("not a video\n")
    commands["dali_stages_h264"] = [sys.executable, str(REPO / "benchmarks" / "dali_stages.py"),
                                    "--features-path", str(h264)]
    done = run_queue(root, commands)
    return {name: Run(cmd[2:], *done[name]) for name, cmd in commands.items()}


def once_a_session(tmp_path_factory, key: str, make):
    """``make(folder)``'s JSON result, made once a test run for every pytest-xdist worker
    (``conftest.made_once``: one lock, a half-made folder made again)."""
    from conftest import made_once

    def make_and_keep(folder: Path) -> None:
        (folder / "result.json").write_text(json.dumps(make(folder)))

    return json.loads((made_once(tmp_path_factory, key, make_and_keep) / "result.json").read_text())


_CACHE: dict[str, dict[str, Run]] = {}


@pytest.fixture(scope="session")
def bench_runs(tmp_path_factory) -> dict[str, Run]:
    # Imported by several test modules: the module-level cache keeps it one run a session.
    if "runs" not in _CACHE:
        def make(root: Path) -> dict:
            runs = run_in_one_process(root, _runs(root))
            return {k: [r.args, r.rc, r.log] for k, r in runs.items()}

        _CACHE["runs"] = {k: Run(*v) for k, v in
                          once_a_session(tmp_path_factory, "bench_runs", make).items()}
    return _CACHE["runs"]
