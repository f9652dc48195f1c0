"""``python -m clip4clip_dali.evaluate --checkpoint RUN/best.pt``: the model and its sampling
from the checkpoint, the data from --config/--set, the results beside the checkpoint."""
from __future__ import annotations

import json

import pytest
import yaml

from reliability_helpers import DEMO, old_mtime, snapshot

pytest_plugins = ["reliability_fixtures"]


def other_run_config(tmp_path, tiny_clips):
    """A config naming another run's folder (holding its own results) and another model: a
    ViT-B-32 started from OpenAI's weights, 8 frames at 224 px (evaluating with it would try
    to download 350 MB)."""
    cfg = yaml.safe_load(DEMO.read_text())
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "eval_test.json").write_text('{"theirs": 1}')
    old_mtime(other / "eval_test.json")
    cfg["train"]["output_dir"] = str(other)
    cfg["model"] = {"name": "ViT-B-32", "pretrained": "openai"}
    cfg["data"].update(max_frames=8, image_resolution=224, data_path=str(tiny_clips),
                       features_path=str(tiny_clips / "videos"), num_workers=0)
    cfg["data"]["synthetic"]["videos"] = 0
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, other


def test_evaluate_takes_the_model_from_the_checkpoint(tiny_clips, tiny_checkpoint, tmp_path):
    from clip4clip_dali.evaluate import main

    config, other = other_run_config(tmp_path, tiny_clips)
    before = snapshot(other)
    assert main(["--checkpoint", str(tiny_checkpoint), "--config", str(config),
                 "--split", "test", "--set", "data.loader=reference"]) == 0
    res = json.loads((tiny_checkpoint.parent / "eval_test.json").read_text())
    from clip4clip_dali.data.msvd import read_split_ids

    assert res["videos"] == len(read_split_ids(tiny_clips, "test"))
    assert res["split"] == "test" and set(res["plain"]) == {"t2v", "v2t"}
    assert snapshot(other) == before  # the other run's results are untouched


def test_evaluate_without_a_config_writes_where_out_says(tiny_checkpoint, tmp_path):
    from clip4clip_dali.evaluate import main

    out = tmp_path / "results" / "mine.json"
    assert main(["--checkpoint", str(tiny_checkpoint), "--split", "val", "--out", str(out),
                 "--set", "data.num_workers=0", "--set", "data.max_frames=4"]) == 0
    assert json.loads(out.read_text())["split"] == "val"


@pytest.mark.parametrize("override, named", [
    ("data.max_frames=8", "data.max_frames = 4"),
    ("model.sim_header=seqTransf", "model.sim_header = 'meanP'"),
    ("data.image_resolution=224", "data.image_resolution = 64"),
])
def test_evaluate_refuses_to_change_what_the_model_sees(tiny_checkpoint, override, named):
    from clip4clip_dali.config import ConfigError
    from clip4clip_dali.evaluate import main

    with pytest.raises(ConfigError, match="cannot change when evaluating") as e:
        main(["--checkpoint", str(tiny_checkpoint), "--set", override])
    assert named in str(e.value)


def test_a_start_that_is_not_here_asks_for_quick_gelu(tiny_checkpoint, tmp_path):
    """A checkpoint whose config starts from a local file that is gone: whether the model uses
    QuickGELU cannot be read from it, so evaluate asks, and accepts the answer."""
    from clip4clip_dali import checkpoint as ckpt
    from clip4clip_dali.errors import UserError
    from clip4clip_dali.evaluate import main

    obj = ckpt.load(tiny_checkpoint)
    obj["config"]["model"]["pretrained"] = str(tmp_path / "gone" / "ViT-B-32.pt")
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    ckpt.atomic_save(obj, path)
    base = ["--checkpoint", str(path), "--split", "val", "--set", "data.num_workers=0"]
    with pytest.raises(UserError, match="pass --set model.quick_gelu=true"):
        main(base)
    assert main(base + ["--set", "model.quick_gelu=false"]) == 0
    assert (path.parent / "eval_val.json").is_file()
