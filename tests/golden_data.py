"""The original CLIP4Clip's golden outputs (``../shared/golden``, README there), for the tests.

The repository vendors a compact copy in ``tests/golden/`` (``python tests/golden_data.py
build`` writes it from ``../shared/golden``): CLIP in float16 (its values are float16 numbers),
float tensors byte-shuffled and xz-compressed, and of each gradient and final weight a fixed
sample of elements plus the whole tensor's largest magnitude (the tolerance's scale). The one
part left out for size is seqTransf_3d's head weights (1.6 MB of incompressible float32 noise):
that case's sims/loss/gradients run where ``../shared/golden`` is present (CI has it).

``../shared/golden`` is used instead when present and byte-identical (SHA-256) to the files the
vendored copy was built from, so both sources give the same answers.
"""
from __future__ import annotations

import hashlib
import os
import io
import json
import lzma
import sys
import zlib
from dataclasses import dataclass
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLIP4CLIP_GOLDEN", REPO.parent / "shared" / "golden"))
VENDORED = Path(__file__).resolve().parent / "golden"
CASES = ("meanP_2d", "meanP_3d", "seqLSTM_2d", "seqTransf_2d", "seqTransf_3d", "tightTransf_2d")
NOT_VENDORED = {"seqTransf_3d"}  # head weights only; see the module docstring
SAMPLE = 128  # elements kept of each gradient / final weight


@dataclass
class Expected:
    """A reference tensor, whole (``index`` None) or a fixed sample of its flat elements."""
    values: torch.Tensor
    absmax: float
    index: torch.Tensor | None = None

    def pick(self, ours: torch.Tensor) -> torch.Tensor:
        flat = ours.detach().reshape(-1)
        return flat if self.index is None else flat[self.index]


def sample_index(name: str, numel: int) -> torch.Tensor | None:
    if numel <= SAMPLE:
        return None
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + numel)
    return torch.randperm(numel, generator=g)[:SAMPLE].sort().values


# ------------------------------------------------------------------------------ packing
def _pack(t: torch.Tensor) -> dict:
    t = t.contiguous()
    planes = t.reshape(-1).view(torch.uint8).reshape(-1, t.element_size()).t().contiguous()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "planes": planes}


def _unpack(d: dict) -> torch.Tensor:
    dtype = getattr(torch, d["dtype"])
    return d["planes"].t().contiguous().reshape(-1).view(dtype).reshape(d["shape"])


def _walk(obj, pack: bool):
    if torch.is_tensor(obj):
        return _pack(obj) if pack else obj
    if isinstance(obj, dict) and not pack and set(obj) == {"dtype", "shape", "planes"}:
        return _unpack(obj)
    if isinstance(obj, dict):
        return {k: _walk(v, pack) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, pack) for v in obj]
    return obj


def _write(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(_walk(obj, True), buf)
    path.write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def _read(path: Path):
    obj = torch.load(io.BytesIO(lzma.decompress(path.read_bytes())), weights_only=True)
    return _walk(obj, False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ source
@lru_cache(maxsize=1)
def shared_identical() -> bool:
    """Whether ../shared/golden holds exactly the files the vendored copy came from."""
    manifest = json.loads((VENDORED / "manifest.json").read_text())
    if not SHARED.is_dir():
        return False
    for name, digest in manifest["sha256"].items():
        f = SHARED / name
        if not f.is_file() or _sha256(f) != digest:
            return False
    return True


_active: list[str] = []


def source() -> str:
    """'shared' or 'vendored': the one ``use`` set, else shared when identical."""
    if _active:
        return _active[-1]
    return "shared" if shared_identical() else "vendored"


@contextmanager
def use(src: str):
    if src not in ("shared", "vendored") or (src == "shared" and not shared_identical()):
        raise ValueError(f"golden source {src!r} is not available")
    _active.append(src)
    try:
        yield
    finally:
        _active.pop()


def _shared(name: str):
    return torch.load(SHARED / name, weights_only=True)


def _expect_all(tensors: dict) -> dict[str, Expected]:
    return {k: Expected(v.reshape(-1), float(v.abs().max())) for k, v in tensors.items()}


def _expect_sampled(tensors: dict) -> dict[str, Expected]:
    out = {}
    for k, v in tensors.items():
        idx = sample_index(k, v.numel())
        out[k] = Expected(v.reshape(-1) if idx is None else v.reshape(-1)[idx],
                          float(v.abs().max()), idx)
    return out


def clip_state() -> dict[str, torch.Tensor]:
    return _clip_state(source())


@lru_cache(maxsize=None)
def _clip_state(src: str) -> dict[str, torch.Tensor]:
    """The tiny CLIP in OpenAI's names, float32."""
    if src == "shared":
        return _shared("clip_tiny.pt")
    return {k: v.float() for k, v in _read(VENDORED / "clip_tiny.xz").items()}


def inputs() -> dict[str, torch.Tensor]:
    return _inputs(source())


@lru_cache(maxsize=None)
def _inputs(src: str) -> dict[str, torch.Tensor]:
    return _shared("inputs.pt") if src == "shared" else _read(VENDORED / "inputs.xz")


def case(name: str) -> dict:
    return _case(name, source())


@lru_cache(maxsize=None)
def _case(name: str, src: str) -> dict:
    """config, init_*, state_extra (None when not available), text_feat, video_feat, sim,
    loss, grads (name -> Expected) and grad_max (the largest gradient of the model)."""
    if src == "shared":
        d = _shared(f"case_{name}.pt")
        d["grad_max"] = max(float(g.abs().max()) for g in d["grads"].values())
        d["grads"] = _expect_all(d["grads"])
        return d
    d = _read(VENDORED / f"case_{name}.xz")
    d["init_from_clip"] = {k: _case(v[len("same as case "):], src)["init_from_clip"][k]
                           if isinstance(v, str) else v.float()
                           for k, v in d["init_from_clip"].items()}
    d["grads"] = {k: Expected(v, d["grad_absmax"][k], sample_index(k, d["grad_numel"][k]))
                  for k, v in d["grads"].items()}
    return d


def trajectory() -> dict:
    return _trajectory(source())


@lru_cache(maxsize=None)
def _trajectory(src: str) -> dict:
    if src == "shared":
        d = _shared("optim_trajectory.pt")
        d["final_state_dict"] = _expect_all(d["final_state_dict"])
        return d
    d = _read(VENDORED / "optim_trajectory.xz")
    d["final_state_dict"] = {k: Expected(v, d["final_absmax"][k],
                                         sample_index(k, d["final_numel"][k]))
                             for k, v in d["final_state_dict"].items()}
    return d


def tokens() -> dict:
    return _tokens(source())


@lru_cache(maxsize=None)
def _tokens(src: str) -> dict:
    return _shared("tokens.pt") if src == "shared" else _read(VENDORED / "tokens.xz")


# ------------------------------------------------------------------------------ our model
# The tiny CLIP of the README as an open_clip config (heads = width // 64, as the original)
TINY_CLIP = {"embed_dim": 128, "quick_gelu": True,
             "vision_cfg": {"layers": 1, "width": 128, "patch_size": 8, "image_size": 16,
                            "head_width": 64},
             "text_cfg": {"context_length": 32, "vocab_size": 500, "width": 128, "heads": 2,
                          "layers": 2}}


def write_clip(tmp: Path) -> Path:
    path = tmp / "clip_tiny.pt"
    if not path.exists():
        torch.save(clip_state(), path)
    return path


def model_config(tmp: Path, name: str, freeze_layer_num: int = -1):
    from clip4clip_dali.config import ModelConfig

    cfg = case(name)["config"]
    return ModelConfig(name="golden-tiny", open_clip_config=TINY_CLIP,
                       pretrained=str(write_clip(tmp)), linear_patch=cfg["linear_patch"],
                       sim_header=cfg["sim_header"],
                       cross_num_hidden_layers=cfg["cross_num_hidden_layers"],
                       freeze_layer_num=freeze_layer_num, quick_gelu=True)


def build_model(tmp: Path, name: str, freeze_layer_num: int = -1):
    """Our CLIP4Clip for case ``name`` through our own building code (from_config), initialised
    from the tiny CLIP file."""
    from clip4clip_dali.model import CLIP4Clip

    cfg = case(name)["config"]
    return CLIP4Clip.from_config(model_config(tmp, name, freeze_layer_num),
                                 max_words=cfg["max_words"], max_frames=cfg["max_frames"])


def original_state(name: str) -> dict[str, torch.Tensor]:
    """The case's full state in the original's names, CLIP in the dtypes its save_model writes
    (exact: the tiny CLIP's values are float16 numbers), the heads float32 as computed."""
    from clip4clip_dali.model.original_names import original_dtype

    extra = case(name)["state_extra"]
    if extra is None:
        return None
    sd = {f"clip.{k}": v.to(original_dtype(f"clip.{k}")) for k, v in clip_state().items()}
    sd.update(extra)
    return sd


def write_original_checkpoint(tmp: Path, name: str) -> Path:
    path = tmp / f"pytorch_model.bin.{name}"
    torch.save(original_state(name), path)
    return path


def batch(with_index: bool = False) -> dict[str, torch.Tensor]:
    """The golden batch in our layout."""
    x = inputs()
    b = {"text": x["input_ids"][:, 0], "text_mask": x["attention_mask"][:, 0],
         "video": x["video"][:, 0, :, 0], "video_mask": x["video_mask"][:, 0]}
    if with_index:
        b["video_index"] = torch.arange(b["video"].shape[0])
    return b


# ------------------------------------------------------------------------------ building
def _sampled_only(tensors: dict):
    exp = _expect_sampled(tensors)
    return ({k: e.values for k, e in exp.items()}, {k: e.absmax for k, e in exp.items()},
            {k: v.numel() for k, v in tensors.items()})


def _rows_read(state: dict, config: dict) -> dict:
    """Drop the position rows the original never reads (seqLSTM reads none of its frame
    positions; seqTransf max_frames; the cross encoder 1 + max_frames)."""
    frames = config["max_frames"]
    out = dict(state)
    if config["sim_header"] == "seqLSTM":
        out.pop("frame_position_embeddings.weight", None)
    for key, rows in (("frame_position_embeddings.weight", frames),
                      ("cross.embeddings.position_embeddings.weight", frames + 1)):
        if key in out:
            out[key] = out[key][:rows].clone()
    return out


def build(shared: Path = SHARED, out: Path = VENDORED) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p.name for p in shared.glob("*.pt"))
    clip = torch.load(shared / "clip_tiny.pt", weights_only=True)
    assert all(torch.equal(v.half().float(), v) for v in clip.values())
    _write({k: v.half() for k, v in clip.items()}, out / "clip_tiny.xz")
    _write(torch.load(shared / "inputs.pt", weights_only=True), out / "inputs.xz")
    _write(torch.load(shared / "tokens.pt", weights_only=True), out / "tokens.xz")
    shared_init: dict = {}
    for name in CASES:
        d = torch.load(shared / f"case_{name}.pt", weights_only=True)
        d["grad_max"] = max(float(g.abs().max()) for g in d["grads"].values())
        d["grads"], d["grad_absmax"], d["grad_numel"] = _sampled_only(d["grads"])
        if name in NOT_VENDORED:
            d["state_extra"] = None
        else:
            d["state_extra"] = _rows_read(d["state_extra"], d["config"])
        d["init_from_clip"] = {k: v.half() if torch.equal(v.half().float(), v) else v
                               for k, v in d["init_from_clip"].items()}
        for k, v in list(d["init_from_clip"].items()):  # stored once across cases
            if k in shared_init and torch.equal(shared_init[k][1], v):
                d["init_from_clip"][k] = f"same as case {shared_init[k][0]}"
            else:
                shared_init[k] = (name, v)
        _write(d, out / f"case_{name}.xz")
    t = torch.load(shared / "optim_trajectory.pt", weights_only=True)
    t["final_state_dict"], t["final_absmax"], t["final_numel"] = \
        _sampled_only(t["final_state_dict"])
    _write(t, out / "optim_trajectory.xz")
    (out / "manifest.json").write_text(json.dumps(
        {"from": "../shared/golden", "sha256": {f: _sha256(shared / f) for f in files}},
        indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python tests/golden_data.py build")
    build()
    total = sum(p.stat().st_size for p in VENDORED.iterdir())
    print(f"wrote {VENDORED}: {total / 1e6:.2f} MB")
