"""Evaluation's gather across ranks holding different numbers of videos (including none)."""
import torch
import torch.distributed as dist

from clip4clip_dali.distributed import all_gather_varlen
from conftest import free_port, run_ranks

ROWS = {0: 3, 1: 0, 2: 2}  # rank -> rows it holds


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=len(ROWS))
    try:
        mine = torch.full((ROWS[rank], 4), float(rank)) + torch.arange(ROWS[rank])[:, None]
        got = all_gather_varlen(mine)
        torch.save(got, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_uneven_gather_no_deadlock_in_rank_order(tmp_path):
    run_ranks(_worker, lambda r: (r, str(tmp_path / "init"), str(tmp_path)), ROWS, 120)
    want = torch.cat([torch.full((n, 4), float(r)) + torch.arange(n)[:, None]
                      for r, n in ROWS.items()])
    for r in ROWS:
        assert torch.equal(torch.load(tmp_path / f"rank{r}.pt"), want)


def _stalling_worker(rank: int, port: int, out_dir: str) -> None:
    import os
    import time

    from clip4clip_dali.distributed import all_reduce_sum, cleanup, init_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = init_distributed(prefer_device="cpu", timeout_s=3)
    if rank == 1:  # never joins the collective: a peer stuck elsewhere
        time.sleep(30)
        return
    start = time.monotonic()
    try:
        all_reduce_sum([1.0], info.device)
        outcome = "returned"
    except Exception as e:  # gloo raises once train.dist_timeout_s has passed
        outcome = type(e).__name__
    with open(f"{out_dir}/rank0.txt", "w") as f:
        f.write(f"{outcome} {time.monotonic() - start:.1f}")
    cleanup()


def test_collective_fails_after_the_configured_timeout(tmp_path):
    port = free_port()
    from clip4clip_dali.data.loaders.reference import worker_context

    ctx = worker_context()  # as run_ranks: torch is imported in the server already
    procs = [ctx.Process(target=_stalling_worker, args=(r, port, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    procs[0].join(timeout=60)
    for p in procs:
        if p.is_alive():
            p.kill()
    outcome, seconds = (tmp_path / "rank0.txt").read_text().split()
    assert outcome != "returned"
    assert float(seconds) < 20, f"waited {seconds} s with a 3 s timeout"
