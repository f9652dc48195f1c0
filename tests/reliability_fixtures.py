"""Tiny data and an untrained tiny model for the reliability tests (test_kill, test_evaluate,
test_reliability_*), made once a session."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


@pytest.fixture(scope="session")
def tiny_clips(tmp_path_factory) -> Path:
    """A synthetic MSVD-format dataset of 6 short VP9 clips (train 4, val 1, test 1)."""
    from clip4clip_dali.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("reliability") / "data"
    generate_dataset(root, 6, codec="vp9", seed=1, min_seconds=2.0, max_seconds=2.5)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_clips, tmp_path_factory) -> Path:
    """``run/best.pt``: the demo's tiny model (4 frames), untrained, with its config (data paths
    at ``tiny_clips``; its start named as ``model.pretrained = 'openai'``, which has no download
    for this model: loading it must never look for one)."""
    from search_fixtures import save_untrained

    from clip4clip_dali import checkpoint as ckpt

    run = tmp_path_factory.mktemp("run")
    path = save_untrained(run / "best.pt")
    obj = ckpt.load(path)
    cfg = obj["config"]
    cfg["model"]["pretrained"] = "openai"
    cfg["data"].update(data_path=str(tiny_clips), features_path=str(tiny_clips / "videos"))
    cfg["data"]["synthetic"]["videos"] = 0
    cfg["train"]["output_dir"] = str(run)
    ckpt.atomic_save(obj, path)
    return path
