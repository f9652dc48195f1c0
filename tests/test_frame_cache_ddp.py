"""The frame cache under DDP (2 gloo ranks on the CPU): each rank decodes only its share of the
videos, the shares are all-gathered, and the batches equal a cache filled by one process."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from conftest import run_ranks
from dali_fixtures import CPU_SPECS, data_config, make_dataset

RANKS = 2


def _worker(rank: int, init_file: str, dataset, out_dir: str) -> None:
    from clip4clip_dali.data.loaders.dali_loader import DaliLoader
    from clip4clip_dali.data.loaders.frame_cache import CachedLoader
    from clip4clip_dali.data.msvd import load_split

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=RANKS)
    try:
        cfg = data_config(dataset, train_frame_order=1)
        split = load_split(cfg, "test")
        decoded = []

        def fill(data, r, n):
            inner = DaliLoader(split, data, "eval", 2, rank=r, world_size=n)
            for batch in inner:
                decoded.extend(batch["video_index"].tolist())
                yield batch

        cache = CachedLoader(split, cfg, "train", 2, fill, rank=rank, world_size=RANKS, seed=4)
        batches = list(cache)
        torch.save({"decoded": decoded, "batches": batches, "frames": cache.frames,
                    "cached": torch.from_numpy(cache.cached)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    specs = CPU_SPECS + [dict(frames=20, fps=10, codec="vp9")]  # 6 videos: 3 a rank
    return make_dataset(tmp_path_factory.mktemp("ddp_cache_ds"), specs)


def test_each_rank_decodes_its_share_and_the_cache_is_gathered(dataset, tmp_path):
    from clip4clip_dali.data.loaders.dali_loader import DaliLoader
    from clip4clip_dali.data.loaders.frame_cache import CachedLoader
    from clip4clip_dali.data.msvd import load_split

    run_ranks(_worker, lambda r: (r, str(tmp_path / "init"), dataset, str(tmp_path)),
              range(RANKS), 300)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(RANKS)]
    assert sorted(got[0]["decoded"]) == [0, 2, 4] and sorted(got[1]["decoded"]) == [1, 3, 5]
    cfg = data_config(dataset, train_frame_order=1)
    split = load_split(cfg, "test")
    for r in range(RANKS):  # the same as one process filling everything alone, per rank
        alone = CachedLoader(split, cfg, "train", 2, lambda d, rk, n: DaliLoader(
            split, d, "eval", 3, rank=rk, world_size=n), rank=r, world_size=RANKS, seed=4)
        want = list(alone)
        assert torch.equal(got[r]["frames"], alone.frames)
        assert got[r]["cached"].all()
        assert len(got[r]["batches"]) == len(want) > 0
        for a, b in zip(got[r]["batches"], want):
            for k in a:
                assert torch.equal(a[k], b[k]), k
