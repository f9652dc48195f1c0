import numpy as np
import pytest

from clip4clip_dali.data.sampling import frame_indices, frame_order_permutation
from clip4clip_dali.data.loaders.sharding import shard_order

# (frames, fps, feature_framerate, max_frames, slice_framepos) -> indices, checked by hand
# against the original's loop: fps truncated, sec*fps + offsets, stop at the first missing frame.
TABLE = [
    # 29.97 fps -> 29: seconds 0..11, frame 319 missing
    ((300, 29.97, 1, 12, 2), [0, 29, 58, 87, 116, 145, 174, 203, 232, 261, 290]),
    # short clip: one second and a frame
    ((30, 29.97, 1, 12, 2), [0, 29]),
    ((1, 25, 1, 12, 2), [0]),
    # exactly max_frames: 12 s at 30 fps, frame 360 does not exist
    ((360, 30, 1, 12, 2), list(range(0, 331, 30))),
    # long clip (20 samples) cut three ways
    ((600, 30, 1, 12, 0), list(range(0, 331, 30))),
    ((600, 30, 1, 12, 1), list(range(240, 571, 30))),
    ((600, 30, 1, 12, 2), [0, 30, 90, 150, 180, 240, 300, 360, 390, 450, 510, 570]),
    # two samples a second: interval 15
    ((60, 30, 2, 12, 2), [0, 15, 30, 45]),
    # 15 fps (real MSVD clip klteYv1Uv9A_27_33: 91 frames)
    ((91, 15.0, 1, 12, 2), [0, 15, 30, 45, 60, 75, 90]),
    # 59.92 fps -> 59 (real MSVD clip 778mkceE0UQ_40_46: 360 frames)
    ((360, 59.916, 1, 12, 2), [0, 59, 118, 177, 236, 295, 354]),
    # feature_framerate above the frame rate: every frame of each second
    ((7, 3, 5, 12, 2), [0, 1, 2, 3, 4, 5, 6]),
]


@pytest.mark.parametrize("args,expected", TABLE)
def test_frame_indices_table(args, expected):
    got = frame_indices(*args)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_empty_and_slow_videos_give_clear_results():
    assert frame_indices(0, 30, 1, 12, 2).tolist() == []
    assert frame_indices(4, 0.5, 1, 12, 2).tolist() == [0, 1, 2, 3]
    for bad_fps in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="frame rate"):
            frame_indices(10, bad_fps, 1, 12, 2)
    with pytest.raises(ValueError, match="slice_framepos"):
        frame_indices(10, 30, 1, 12, 3)


def test_frame_order():
    rng = np.random.default_rng(0)
    assert frame_order_permutation(4, 0).tolist() == [0, 1, 2, 3]
    assert frame_order_permutation(4, 1).tolist() == [3, 2, 1, 0]
    perm = frame_order_permutation(10, 2, rng)
    assert sorted(perm.tolist()) == list(range(10))
    assert perm.tolist() == frame_order_permutation(10, 2, np.random.default_rng(0)).tolist()


def test_shards_disjoint_complete_and_reshuffled():
    n = 103
    for drop_last in (False, True):
        shards = [shard_order(n, 0, 7, True, 2, r, drop_last, batch_size=8) for r in range(2)]
        assert not set(shards[0]) & set(shards[1])
        union = set(shards[0]) | set(shards[1])
        if drop_last:
            assert len(shards[0]) == len(shards[1]) == 48
        else:
            assert union == set(range(n))
    assert shard_order(n, 0, 7, True).tolist() != shard_order(n, 1, 7, True).tolist()
    assert shard_order(n, 1, 7, True).tolist() == shard_order(n, 1, 7, True).tolist()
    # Eval: no shuffle, nothing dropped or duplicated, lengths differ by at most one.
    ev = [shard_order(5, 3, 7, False, 2, r) for r in range(2)]
    assert sorted(np.concatenate(ev).tolist()) == [0, 1, 2, 3, 4]


def test_two_ranks_see_the_same_global_batches_as_one():
    one = shard_order(64, 2, 1, True, 1, 0, True, batch_size=8)
    two = [shard_order(64, 2, 1, True, 2, r, True, batch_size=4) for r in range(2)]
    for step in range(8):
        assert set(one[step * 8:(step + 1) * 8]) == set(two[0][step * 4:(step + 1) * 4]) | set(
            two[1][step * 4:(step + 1) * 4])
