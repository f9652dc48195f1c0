"""retrieval_metrics on hand-made similarity matrices (CLIP4Clip's multi-sentence rules)."""
import numpy as np
import pytest
import torch

from clip4clip_dali.metrics import dsl_metrics, retrieval_metrics


def test_perfect_identity():
    sim = np.eye(5) + 0.01 * np.arange(5)[None, :]
    m = retrieval_metrics(sim, np.arange(5))
    for d in ("t2v", "v2t"):
        assert m[d]["R1"] == 100.0 and m[d]["R5"] == 100.0
        assert m[d]["MdR"] == 1.0 and m[d]["MnR"] == 1.0


def test_hand_ranks_t2v():
    # 4 captions, 3 videos. caption -> video: 0,0,1,2
    sim = np.array([
        [0.9, 0.1, 0.0],   # own video 0 rank 0
        [0.2, 0.5, 0.3],   # own 0 rank 2
        [0.4, 0.6, 0.1],   # own 1 rank 0
        [0.7, 0.8, 0.3],   # own 2 rank 2
    ])
    cv = np.array([0, 0, 1, 2])
    m = retrieval_metrics(sim, cv)
    # ranks 0,2,0,2
    assert m["t2v"]["R1"] == 50.0
    assert m["t2v"]["R5"] == 100.0
    assert m["t2v"]["MnR"] == pytest.approx(2.0)
    assert m["t2v"]["MdR"] == 1.0  # lower median of (0,0,2,2) = 0, +1 (torch.median rule)
    # v2t: group max over captions of video g, for each video v
    # group0 = max(rows 0,1) = [0.9,0.5,0.3]; group1 = [0.4,0.6,0.1]; group2 = [0.7,0.8,0.3]
    # video 0: scores over groups [0.9,0.4,0.7] own 0 -> rank 0
    # video 1: [0.5,0.6,0.8] own 1 -> rank 1
    # video 2: [0.3,0.1,0.3] own 2 -> tie with group0 -> counted against: rank 1
    assert m["v2t"]["R1"] == pytest.approx(100 / 3)
    assert m["v2t"]["MnR"] == pytest.approx(1 + 2 / 3)
    assert m["v2t"]["MdR"] == 2.0


def test_collapsed_model_is_not_perfect():
    sim = torch.zeros(6, 3)
    m = retrieval_metrics(sim, np.array([0, 0, 1, 1, 2, 2]))
    assert m["t2v"]["R1"] == 0.0 and m["t2v"]["MnR"] == 3.0


def test_matches_original_double_argsort_on_random():
    rng = np.random.default_rng(0)
    n_v = 20
    cv = np.repeat(np.arange(n_v), rng.integers(1, 5, n_v))
    sim = rng.standard_normal((len(cv), n_v))
    m = retrieval_metrics(sim, cv)
    # t2v by the original's double argsort
    order = np.argsort(-sim, axis=1)
    ranks = np.argsort(order, axis=1)[np.arange(len(cv)), cv]
    assert m["t2v"]["R1"] == pytest.approx(100 * np.mean(ranks < 1))
    assert m["t2v"]["R10"] == pytest.approx(100 * np.mean(ranks < 10))
    assert m["t2v"]["MnR"] == pytest.approx(ranks.mean() + 1)
    # v2t by padding groups with -inf and max over captions, as tensor_video_to_text_sim
    groups = np.full((n_v, n_v), -np.inf)
    for i, v in enumerate(cv):
        groups[v] = np.maximum(groups[v], sim[i])
    vt = groups.T
    sx = np.sort(-vt, axis=1)
    d = -np.diag(vt)[:, None]
    r = np.where(sx - d == 0)[1]
    assert m["v2t"]["R1"] == pytest.approx(100 * np.mean(r == 0))
    assert m["v2t"]["MdR"] == pytest.approx(np.median(r) + 1)
    assert m["v2t"]["MnR"] == pytest.approx(r.mean() + 1)


def test_dsl_runs_and_bad_shapes():
    rng = np.random.default_rng(1)
    sim = rng.standard_normal((8, 4)) * 5
    out = dsl_metrics(sim, np.array([0, 0, 1, 1, 2, 2, 3, 3]))
    assert set(out) == {"t2v", "v2t"}
    with pytest.raises(ValueError):
        retrieval_metrics(sim, np.array([0, 1]))
    with pytest.raises(ValueError):
        retrieval_metrics(sim, np.arange(8))
