"""A tiny model trained on a few generated clips, and indexes of them, for the search tests.

Loaded as a plugin (``pytest_plugins``) by the test modules that need it, so the model is
trained once a run (once for all xdist workers, through ``conftest.made_once``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import check, made_once, run_here

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
CLIPS = 12


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """CLIPS generated VP9 clips (coloured shapes moving), every one in the train split; the
    last four also form the test split. Made once a run, shared by the xdist workers (read
    only: a test that changes clips copies them)."""
    def make(folder: Path) -> None:
        from clip4clip_dali.data.msvd import read_split_ids
        from clip4clip_dali.data.synthetic import generate_dataset

        root = folder / "data"
        generate_dataset(root, CLIPS, codec="vp9", seed=3, min_seconds=2.0, max_seconds=3.0)
        ids = [v for s in ("train", "val", "test") for v in read_split_ids(root, s)]
        (root / "train_list.txt").write_text("\n".join(sorted(ids)) + "\n")
        (root / "test_list.txt").write_text("\n".join(sorted(ids)[-4:]) + "\n")

    return made_once(tmp_path_factory, "search_clips", make) / "data"


@pytest.fixture(scope="session")
def trained(clips, tmp_path_factory) -> Path:
    """latest.pt of a tiny meanP trained on ``clips`` until it tells most apart (measured: the
    caption's video first for 90% of the 51 captions, 46 of them; 100 steps of 16). Trained
    once a run, in the process that needs it first (the costliest fixture of the suite),
    shared by the xdist workers; tests only read its folder."""
    def make(out: Path) -> None:
        sets = [f"data.data_path={clips}", f"data.features_path={clips / 'videos'}",
                "data.synthetic.videos=0", "data.frame_cache=true", "train.batch_size=16",
                "train.epochs=25", "train.eval_batch_size=16", "train.lr=4.0e-3",
                "train.eval_every_epoch=false", "eval.test_at_end=false",
                f"train.output_dir={out}", "train.log_every=100"]
        check(run_here("clip4clip_dali.train", "--config", DEMO,
                       *[x for s in sets for x in ("--set", s)]))

    return made_once(tmp_path_factory, "search_run", make) / "latest.pt"


def save_untrained(path: Path, **model) -> Path:
    """A checkpoint (weights + config) of the demo's tiny model, untrained, with ``model``
    options changed (e.g. sim_header="tightTransf")."""
    import warnings

    from clip4clip_dali import checkpoint as ckpt
    from clip4clip_dali.config import load_config
    from clip4clip_dali.runsetup import build_model, seed_everything

    cfg = load_config(DEMO, [f"model.{k}={v}" for k, v in model.items()]
                      + ["data.max_frames=4"])
    seed_everything(len(str(path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_model(cfg, "cpu")
    ckpt.save_weights(path, m, cfg.to_dict())
    return path


@pytest.fixture(scope="session")
def folder_index(trained, clips, tmp_path_factory) -> Path:
    """An index of the ``clips`` folder made with the ``trained`` model, made once a run and
    shared by the xdist workers (tests only read it, or are refused writing to it)."""
    import json

    def make(folder: Path) -> None:
        p = run_here("clip4clip_dali.index", "--no-progress", "--checkpoint", str(trained),
                     "--videos", str(clips / "videos"), "--out", str(folder / "index"), "--json")
        check(p)
        s = json.loads(p.stdout[p.stdout.index("{"):])
        assert (s["videos"] == s["encoded"] == CLIPS and s["failed"] == []
                and s["kind"] == "embeddings")

    return made_once(tmp_path_factory, "search_index", make) / "index"


@pytest.fixture
def clip4clip_log(caplog):
    """Records of the project's logger (which does not propagate once a CLI set it up)."""
    import logging

    logger = logging.getLogger("clip4clip_dali")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="clip4clip_dali")
    yield caplog
    logger.removeHandler(caplog.handler)


def chromium_driver(tmp_path: Path, *args: str):
    """A headless Chromium driven by selenium, with ``args`` added; fails in CI (which installs
    them) and skips elsewhere when Chromium, chromedriver or selenium is missing."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    missing = [n for n, ok in (("chromium", chromium), ("chromedriver", chromedriver)) if not ok]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        why = f"{', '.join(missing)} not installed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}", *args):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)
