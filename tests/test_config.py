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
