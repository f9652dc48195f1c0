"""When one DDP rank dies, the others end with an error in bounded time instead of hanging."""
import subprocess
import sys
import time

from test_train import REPO, env, tiny_args, tiny_data  # noqa: F401 (fixture)


def test_one_rank_failing_ends_the_run(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "fault_launcher.py"),
           *tiny_args(tiny_data, tmp_path / "out", "train.epochs=3")]
    start = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, env={**env(), "CLIP4CLIP_FAULT": "rank1_fails"},
                       capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - start
    assert p.returncode != 0
    assert "injected failure on rank 1" in p.stderr
    assert elapsed < 180, f"the surviving rank took {elapsed:.0f} s to stop"
