"""``python pipelines/make_shards.py`` as the README runs it (a process of its own): a split
written as shards a training config reads, and a config that already reads shards refused in
one line. What it writes and how it resumes: test_shards.py, in-process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, run_main
from dali_fixtures import CPU_SPECS, make_dataset

SCRIPT = str(REPO / "pipelines" / "make_shards.py")


def make_shards(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_readme_command_writes_shards_a_config_trains_from(tmp_path, capsys):
    from clip4clip_dali.config import load_config
    from clip4clip_dali.data.shards import load_split

    data, videos = make_dataset(tmp_path / "src", CPU_SPECS)
    out = tmp_path / "shards"
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--set", f"data.data_path={data}",
            "--set", f"data.features_path={videos}", "--set", "data.synthetic.videos=0",
            "--out", str(out), "--shard-size", "2", "--workers", "1", "--splits", "train", "-q"]
    p = make_shards(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = out / "manifest.json"
    assert f"train with: --set data.dataset=shards --set data.data_path={manifest}" in p.stdout
    assert "wrote 3 shards (0 kept from an earlier run) of 5 videos" in p.stdout, p.stdout
    assert "train 5;" in p.stdout
    doc = json.loads(manifest.read_text())
    assert list(doc["splits"]) == ["train"]
    cfg = load_config(str(REPO / "configs" / "demo.yaml"),
                      ["data.dataset=shards", f"data.data_path={manifest}",
                       "data.synthetic.videos=0"])
    split = load_split(cfg.data, "train")
    assert sorted(split.video_ids) == [f"video{k}" for k in range(len(CPU_SPECS))]

    # the refusal, in this process (the script's start-up is tested above)
    sys.path.insert(0, str(REPO / "pipelines"))
    import make_shards as ms

    assert run_main(ms.main, "--config", str(REPO / "configs" / "demo.yaml"),
                    "--set", "data.dataset=shards", "--set", f"data.data_path={manifest}",
                    "--set", "data.synthetic.videos=0", "--out", str(tmp_path / "again")) == 2
    err = capsys.readouterr().err
    assert "already reads shards" in err and len(err.strip().splitlines()) == 1, err
