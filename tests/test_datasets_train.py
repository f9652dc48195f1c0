"""The trainer end to end, one epoch, on the MSR-VTT and JSON Lines layouts (tiny model, CPU,
VP9 and MJPEG clips so DALI's CPU decoder is exercised): train, validate, test at the end,
then the evaluate CLI, each in this process (test_train.train_here). MSVD's own run is in
test_train.py."""
from __future__ import annotations

import json
from pathlib import Path

from layout_fixtures import own_clips_records, write_clips, write_lines, write_msrvtt
from test_train import DEMO, check, losses, train_here

TRAIN, TEST = ["video0", "video1", "video2", "video3", "video4"], ["video5", "video6", "video7"]


def args(out: Path, *sets: str) -> list[str]:
    common = ["data.synthetic.videos=0", "data.max_frames=2", "data.image_resolution=32",
              "model.open_clip_config.vision_cfg.image_size=32", "train.batch_size=4",
              "train.epochs=1", "train.log_every=1", "train.eval_batch_size=4",
              f"train.output_dir={out}", "eval.index_test_split=false"]  # tested elsewhere
    return ["--config", DEMO] + [x for s in [*common, *sets] for x in ("--set", s)]


def check_run(out: Path, eval_name: str) -> dict:
    ls = losses(out)
    assert ls and all(x == x and abs(x) < 1e4 for x in ls)  # finite
    assert (out / "eval_val_epoch0.json").is_file() and (out / "best.pt").is_file()
    res = json.loads((out / f"eval_{eval_name}.json").read_text())
    assert set(res["plain"]) == {"t2v", "v2t"}
    return res


def test_msrvtt_one_epoch_with_dali(tmp_path):
    """Without msrvtt_unfold_sentences (a caption drawn per video per epoch)."""
    root = tmp_path / "msrvtt"
    write_clips(root / "MSRVTT_Videos")
    write_msrvtt(root / "msrvtt_data", TRAIN, TEST)
    out = tmp_path / "run"
    data = ["data.dataset=msrvtt", f"data.data_path={root / 'msrvtt_data'}",
            f"data.features_path={root / 'MSRVTT_Videos'}", "data.loader=dali",
            "data.frame_cache=false"]
    p = train_here(args(out, *data))
    check(p)
    assert len(losses(out)) == 1  # 5 train videos: one batch of 4
    assert "dali" in p.stderr
    res = check_run(out, "test")
    assert res["videos"] == 3 and res["captions"] == 3  # the 1k-A layout: a caption a video
    e = train_here(args(out, *data) + ["--checkpoint", str(out / "best.pt"), "--split", "val"],
                   module="clip4clip_dali.evaluate")
    check(e)
    assert json.loads((out / "eval_val.json").read_text())["videos"] == 3


def test_own_clips_one_epoch(tmp_path):
    """JSON Lines, loader auto + frame cache (the demo config's)."""
    root = tmp_path / "own"
    clips = {**write_clips(root / "clips" / "a", TRAIN), **write_clips(root / "clips" / "b", TEST)}
    splits = {v: "train" for v in TRAIN} | {"video5": "val", "video6": "test", "video7": "test"}
    path = write_lines(root / "dataset.jsonl", own_clips_records(clips, root, splits))
    out = tmp_path / "run"
    p = train_here(args(out, "data.dataset=jsonl", f"data.data_path={path}"))
    check(p)
    assert len(losses(out)) == 2  # 10 (video, caption) pairs, batches of 4
    res = check_run(out, "test")
    assert res["videos"] == 2 and res["captions"] == 4


def test_too_few_training_samples_counts_videos_when_captions_are_drawn(tmp_path):
    root = tmp_path / "msrvtt"
    write_clips(root / "MSRVTT_Videos", TRAIN + ["video5"])
    write_msrvtt(root / "msrvtt_data", TRAIN, ["video5"])  # 5 videos, 15 captions
    p = train_here(args(tmp_path / "run", "data.dataset=msrvtt", "train.batch_size=8",
                        f"data.data_path={root / 'msrvtt_data'}",
                        f"data.features_path={root / 'MSRVTT_Videos'}"))
    assert p.returncode != 0
    assert "has 5 training samples, fewer than one global batch" in p.stderr
