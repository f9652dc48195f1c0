"""Typed configuration: dataclasses loaded from YAML, dotted ``--set`` overrides, clear errors.

Every option of the original CLIP4Clip that matters for MSVD has a home here (the original's
flag name is given in the comment where ours differs), and so do ours (loader backend,
precision, compile, gradient checkpointing).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A user-facing configuration problem; the message names the key and the file."""


@dataclass
class SyntheticConfig:
    videos: int = 0  # > 0: generate this many synthetic clips at data_path when it is missing
    codec: Literal["vp9", "mjpeg", "h264"] = "vp9"
    seed: int = 0
    min_seconds: float = 2.0  # clip lengths are drawn in [min_seconds, max_seconds]
    max_seconds: float = 20.0


@dataclass
class DataConfig:
    # Layout on disk (README: Datasets): msvd (split lists + raw-captions.pkl in data_path),
    # msrvtt (MSRVTT_data.json + CSVs in data_path), jsonl (data_path: a .jsonl or .csv file,
    # one line per caption, video paths relative to it; features_path unused); didemo,
    # activitynet, lsmdc (the original's annotation files in data_path); shards (data_path: a
    # shard set's manifest.json, written by pipelines/make_shards.py).
    dataset: Literal["msvd", "msrvtt", "jsonl", "didemo", "activitynet", "lsmdc",
                     "shards"] = "msvd"
    data_path: str = "data/msvd"  # split lists + raw-captions.pkl
    features_path: str = "data/msvd/videos"  # video root (any extension, walked recursively)
    max_words: int = 32
    max_frames: int = 12
    feature_framerate: int = 1
    slice_framepos: int = 2  # 0 head, 1 tail, 2 uniform
    train_frame_order: int = 0  # 0 ordinary, 1 reverse, 2 random
    eval_frame_order: int = 0
    image_resolution: int = 224
    loader: Literal["auto", "dali", "torchcodec", "reference"] = "auto"
    num_workers: int = 2  # reference loader DataLoader workers
    dali_threads: int = 0  # threads per DALI pipeline; 0: this process's share of the cores
    # Independent DALI pipelines per process (each its own threads and CUDA stream; on a GPU,
    # more concurrent NVDEC sessions), dealt batches in turn: the batches are the same for any.
    dali_pipelines: int = 1
    torchcodec_threads: int = 2  # torchcodec loader: clips decoded at once (threads)
    # On a GPU: "nvdec" decodes on the GPU's video engine; "cpu" decodes with DALI's CPU
    # decoder (dali_threads threads; VP8/VP9/MJPEG) and resizes/normalises on the GPU
    # (experimental: not yet measured on a GPU). Ignored on the CPU.
    dali_decoder: Literal["nvdec", "cpu"] = "nvdec"
    # Decode each video of a split once and keep its sampled frames as uint8 where the batches
    # go (data/loaders/frame_cache.py; MSVD train, 12 frames at 224: 2.2 GB a process).
    frame_cache: bool = False
    prefetch: int = 2  # batches queued ahead (DALI prefetch_queue_depth, DataLoader prefetch)
    manifest: Optional[str] = None  # default: <features_path>/.clip4clip_manifest.json
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # MSR-VTT (file names relative to data_path): train reads msrvtt_train_csv's video_id
    # column with the captions of msrvtt_json; val and test read the 1k-A CSV (one caption a
    # row), val msrvtt_val_csv when set, as the original's --val_csv.
    msrvtt_json: str = "MSRVTT_data.json"
    msrvtt_train_csv: str = "MSRVTT_train.9k.csv"
    msrvtt_test_csv: str = "MSRVTT_JSFUSION_test.csv"
    msrvtt_val_csv: Optional[str] = None
    msrvtt_unfold_sentences: bool = False  # --expand_msrvtt_sentences: a sample per caption
    # JSONL/CSV lines without a split: videos are split by these fractions (seeded, by video).
    jsonl_val_fraction: float = 0.1
    jsonl_test_fraction: float = 0.1
    jsonl_split_seed: int = 0
    # shards (data_path: a make_shards.py manifest): None keeps the source dataset's rule
    # (MSR-VTT: one caption per video per epoch), True/False forces it. resampled > 0: each
    # training epoch draws that many samples with replacement (open_clip's --dataset-resampled).
    shards_caption_per_epoch: Optional[bool] = None
    shards_resampled: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    name: str = "ViT-B-32"  # pretrained_clip_name; "ViT-B/32" accepted too
    pretrained: str = "openai"  # local file, open_clip tag, or "none" (random init, warns)
    open_clip_config: Optional[dict] = None  # custom open_clip model config (tiny test models)
    linear_patch: Literal["2d", "3d"] = "2d"
    sim_header: Literal["meanP", "seqLSTM", "seqTransf", "tightTransf"] = "meanP"
    loose_type: bool = True  # forced False for tightTransf, as in the original
    cross_num_hidden_layers: int = 4
    freeze_layer_num: int = 0  # -1 none; 0 embeddings/conv1/ln_pre; N also blocks < N
    quick_gelu: Optional[bool] = None  # None: auto (OpenAI weights / -quickgelu names use QuickGELU)


@dataclass
class TrainConfig:
    output_dir: str = "runs/msvd_meanP"
    seed: int = 42
    epochs: int = 5
    batch_size: int = 128  # global batch, whatever the number of processes
    eval_batch_size: int = 64  # videos per evaluation batch (global)
    gradient_accumulation_steps: int = 1
    max_steps: int = 0  # > 0: stop after this many optimizer steps (demo, benchmarks)
    optimizer: Literal["bertadam", "adamw"] = "bertadam"
    lr: float = 1e-4
    coef_lr: float = 1e-3  # multiplier for parameters of the CLIP backbone
    weight_decay: float = 0.2
    warmup_proportion: float = 0.1
    schedule: Literal["warmup_cosine", "warmup_linear", "constant"] = "warmup_cosine"
    max_grad_norm: float = 1.0
    precision: Literal["amp_bf16", "amp_fp16", "fp32", "fp16_weights"] = "amp_bf16"
    compile: bool | Literal["auto"] = False  # auto: on when training on CUDA (compile_enabled)
    grad_checkpointing: bool = False
    local_loss: bool = False
    nonfinite_loss: Literal["skip", "stop"] = "skip"
    dist_timeout_s: float = 1800.0  # a collective waiting longer than this fails the run
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0: only at epoch end
    eval_every_epoch: bool = True
    init_model: Optional[str] = None  # weights only
    resume: Optional[str] = None  # full state; "auto" = <output_dir>/latest.pt when present


@dataclass
class EvalConfig:
    split: str = "val"
    sim_chunk: int = 1024  # captions per similarity chunk
    dsl: bool = False  # also report dual-softmax re-ranked metrics
    test_at_end: bool = True  # train: evaluate best.pt on data.test_split when training ends
    # train, after test_at_end: index data.test_split into <output_dir>/index, print one search
    index_test_split: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Range checks: key -> (predicate, description)
_CHECKS: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.max_words": (lambda v: v >= 3, "at least 3 (SOT, one token, EOT)"),
    # (upper bounds: beyond them a batch cannot be allocated, and the error would be deep)
    "data.max_frames": (lambda v: 1 <= v <= 1024, "between 1 and 1024"),
    "data.feature_framerate": (lambda v: v >= 1, "at least 1 frame per second"),
    "data.slice_framepos": (lambda v: v in (0, 1, 2), "0 (head), 1 (tail) or 2 (uniform)"),
    "data.train_frame_order": (lambda v: v in (0, 1, 2), "0, 1 or 2"),
    "data.eval_frame_order": (lambda v: v in (0, 1, 2), "0, 1 or 2"),
    "data.image_resolution": (lambda v: 8 <= v <= 4096, "between 8 and 4096 pixels"),
    "data.num_workers": (lambda v: v >= 0, "0 or more"),
    "data.dali_threads": (lambda v: v >= 0, "0 (auto: the cores of this process) or more"),
    "data.dali_pipelines": (lambda v: v >= 1, "at least 1"),
    "data.shards_resampled": (lambda v: v >= 0, "0 (epochs) or the samples an epoch draws"),
    "data.torchcodec_threads": (lambda v: v >= 1, "at least 1"),
    "data.prefetch": (lambda v: v >= 1, "at least 1"),
    "data.synthetic.videos": (lambda v: v >= 0, "0 or more"),
    "data.jsonl_val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "data.jsonl_test_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.cross_num_hidden_layers": (lambda v: v >= 1, "at least 1"),
    "model.freeze_layer_num": (lambda v: v >= -1, "-1 (nothing frozen) or more"),
    "train.epochs": (lambda v: v >= 1, "at least 1"),
    "train.batch_size": (lambda v: v >= 1, "at least 1"),
    "train.eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "train.gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "train.max_steps": (lambda v: v >= 0, "0 (no limit) or more"),
    "train.lr": (lambda v: v > 0, "positive"),
    "train.coef_lr": (lambda v: v >= 0, "0 or more"),
    "train.weight_decay": (lambda v: v >= 0, "0 or more"),
    "train.warmup_proportion": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.max_grad_norm": (lambda v: v >= 0, "0 (no clipping) or more"),
    "train.log_every": (lambda v: v >= 1, "at least 1"),
    "train.dist_timeout_s": (lambda v: v > 0, "positive (seconds)"),
    "train.checkpoint_every": (lambda v: v >= 0, "0 or more"),
    "eval.sim_chunk": (lambda v: v >= 1, "at least 1"),
}


def compile_enabled(value: bool | str, device) -> bool:
    """Whether ``train.compile`` compiles on ``device``: ``auto`` on CUDA only (on a CPU,
    compiling takes minutes and gains little)."""
    if value == "auto":
        return getattr(device, "type", str(device)) == "cuda"
    return bool(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp_inner in inner[:-1]:  # the first type that takes the value (bool | 'auto')
            try:
                return _coerce(value, tp_inner, key, source)
            except ConfigError:
                pass
        try:
            return _coerce(value, inner[-1], key, source)
        except ConfigError:
            if len(inner) == 1:
                raise
            raise ConfigError(f"{source}: {key} = {value!r} has the wrong type; expected "
                              f"{' | '.join(_type_name(a) for a in inner)}.") from None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r} is not allowed; choose one of "
                              f"{', '.join(repr(a) for a in allowed)}.")
        return value
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
    }.get(tp)
    if ok is None or not ok(value):
        raise ConfigError(f"{source}: {key} = {value!r} has the wrong type; expected "
                          f"{_type_name(tp)}.")
    return float(value) if tp is float else value


def _build(cls: type, raw: dict, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, "
                          f"got {type(raw).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)} in "
                          f"{where}; known keys: {', '.join(sorted(names))}.")
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".", source)
        else:
            kwargs[name] = _coerce(value, tp, key, source)
    return cls(**kwargs)


def _validate(cfg: Config, source: str) -> None:
    for key, (pred, desc) in _CHECKS.items():
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if not pred(obj):
            raise ConfigError(f"{source}: {key} = {obj!r} is out of range; it must be {desc}.")
    if cfg.data.jsonl_val_fraction + cfg.data.jsonl_test_fraction >= 1:
        raise ConfigError(f"{source}: data.jsonl_val_fraction + data.jsonl_test_fraction must "
                          f"leave some videos for training (sum below 1).")
    if cfg.data.synthetic.videos > 0 and cfg.data.dataset != "msvd":
        raise ConfigError(f"{source}: data.synthetic generates an MSVD-layout dataset; set "
                          f"data.synthetic.videos=0 with data.dataset={cfg.data.dataset}.")
    if cfg.model.sim_header == "tightTransf" and cfg.model.loose_type:
        cfg.model.loose_type = False  # the original's tightTransf is never loose type


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set data.max_frames=8.")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value != "" else ""


def _apply_override(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section.")
    node[path[-1]] = value


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    cfg = _build(Config, raw or {}, "", source)
    _validate(cfg, source)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; pass a file such as "
                              f"configs/msvd_meanP.yaml.") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); pass a "
                              f"YAML file such as configs/msvd_meanP.yaml.") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); pass a "
                              f"YAML file such as configs/msvd_meanP.yaml.") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections "
                              f"(data, model, train, eval).")
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(raw, keys, value)
    if overrides:
        source += " (with --set overrides)"
    return from_dict(raw, source)
