import pytest

from clip4clip_dali.config import Config, ConfigError, load_config


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = _write(tmp_path, "data:\n  max_frames: 8\ntrain:\n  lr: 1\n")
    cfg = load_config(path, ["data.max_frames=6", "model.sim_header=seqTransf",
                             "train.resume=null"])
    assert isinstance(cfg, Config)
    assert cfg.data.max_frames == 6 and cfg.model.sim_header == "seqTransf"
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.resume is None


def test_tight_transf_is_never_loose():
    cfg = load_config(None, ["model.sim_header=tightTransf"])
    assert cfg.model.loose_type is False


@pytest.mark.parametrize("text,match", [
    ("data:\n  max_frame: 8\n", r"unknown key\(s\) data.max_frame"),
    ("dta:\n  max_frames: 8\n", r"unknown key\(s\) dta"),
    ("data:\n  max_frames: eight\n", "data.max_frames = 'eight' has the wrong type"),
    ("train:\n  compile: 1\n", "train.compile = 1 has the wrong type"),
    ("data:\n  slice_framepos: 3\n", "data.slice_framepos = 3 is out of range"),
    ("train:\n  precision: fp8\n", "train.precision = 'fp8' is not allowed"),
    ("data: 3\n", "data must be a mapping"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("data: [\n", "not valid YAML"),
])
def test_bad_configs_name_key_and_file(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["data.max_frames"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="with --set overrides"):
        load_config(None, ["train.batch_size=0"])


def test_compile_auto_is_on_only_on_cuda(tmp_path):
    import torch

    from clip4clip_dali.config import compile_enabled

    assert load_config(None, ["train.compile=auto"]).train.compile == "auto"
    assert load_config(None, ["train.compile=true"]).train.compile is True
    assert load_config(None, []).train.compile is False
    with pytest.raises(ConfigError, match=r"train.compile = 'yes' has the wrong type; "
                                          r"expected bool \| 'auto'"):
        load_config(_write(tmp_path, "train:\n  compile: 'yes'\n"))
    assert compile_enabled("auto", torch.device("cuda", 0)) is True
    assert compile_enabled("auto", torch.device("cpu")) is False
    assert compile_enabled(True, torch.device("cpu")) is True
    assert compile_enabled(False, torch.device("cuda")) is False


def test_msvd_configs_turn_on_compile_auto_and_the_frame_cache():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("msvd_*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = load_config(path)
        assert cfg.train.compile == "auto" and cfg.data.frame_cache is True, path.name
