"""Evaluation's gather across ranks holding different numbers of videos (including none)."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clip4clip_dali.distributed import all_gather_varlen

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
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path / "init"), str(tmp_path)))
             for r in ROWS]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, "a rank hung or failed"
    want = torch.cat([torch.full((n, 4), float(r)) + torch.arange(n)[:, None]
                      for r, n in ROWS.items()])
    for r in ROWS:
        assert torch.equal(torch.load(tmp_path / f"rank{r}.pt"), want)
