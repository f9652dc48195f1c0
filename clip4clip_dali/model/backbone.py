"""open_clip towers for CLIP4Clip: building, pretrained weights, 3d linear patch, freezing.

The backbone is a plain ``open_clip.model.CLIP`` whose parameter names are OpenAI's
(``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``, ``token_embedding.weight``,
``positional_embedding``, ``text_projection``, ``logit_scale`` ...), so OpenAI state dicts, OpenAI JIT
archives and open_clip checkpoints all load into it. The 3d patch embedding is an extra
``visual.conv2`` (the original's name), used instead of ``visual.conv1`` when linear_patch is 3d.
"""
from __future__ import annotations

import copy
import logging
import socket
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn

from ..config import ConfigError
from ..errors import UserError

log = logging.getLogger(__name__)

_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_HOW_TO_PASS = ("set model.pretrained to a local file (OpenAI's JIT archive such as ViT-B-32.pt, an "
                "OpenAI or open_clip state dict .pt/.bin, or a .safetensors file), to an open_clip "
                "tag such as 'openai' (downloaded when online), or to 'none' for random weights")


# ----------------------------------------------------------------------------------------------
# model configuration
# ----------------------------------------------------------------------------------------------
def normalize_model_name(name: str) -> str:
    """'ViT-B/32' (the original's spelling) -> 'ViT-B-32' (open_clip's)."""
    return name.strip().replace("/", "-")


def resolve_model_config(name: str, open_clip_config: Optional[dict]) -> dict:
    """The open_clip model config dict (embed_dim, vision_cfg, text_cfg, quick_gelu?)."""
    import open_clip

    if open_clip_config is not None:
        cfg = copy.deepcopy(dict(open_clip_config))
        source = "model.open_clip_config"
    else:
        cfg = open_clip.get_model_config(normalize_model_name(name))
        source = f"model.name = {name!r}"
        if cfg is None:
            vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
            raise ConfigError(f"{source} is not an open_clip model; use a ViT such as "
                              f"{', '.join(vits[:8])} ... (or ViT-B/32, ViT-B/16), or give "
                              f"model.open_clip_config.")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ConfigError(f"{source}: the open_clip config lacks {key!r}; it needs embed_dim, "
                              f"vision_cfg and text_cfg.")
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    if v.get("timm_model_name") or not isinstance(v.get("layers", 12), int):
        raise ConfigError(f"{source}: CLIP4Clip needs an open_clip ViT image tower (patch "
                          f"embedding + transformer); timm and ResNet towers are not supported.")
    if t.get("hf_model_name") or t.get("embed_cls") or t.get("no_causal_mask") \
            or t.get("pool_type", "argmax") != "argmax" or t.get("proj_bias") \
            or t.get("proj_type", "linear") != "linear":
        raise ConfigError(f"{source}: CLIP4Clip needs CLIP's causal text transformer with the "
                          f"feature at the EOT token (argmax pooling, linear projection).")
    if v.get("pool_type", "tok") != "tok" or v.get("attentional_pool"):
        raise ConfigError(f"{source}: the image tower must pool the class token (pool_type "
                          f"'tok'), as CLIP4Clip takes the CLS feature per frame.")
    return cfg


def build_clip(model_cfg: dict, quick_gelu: bool) -> nn.Module:
    from open_clip.model import CLIP

    return CLIP(embed_dim=model_cfg["embed_dim"], vision_cfg=copy.deepcopy(model_cfg["vision_cfg"]),
                text_cfg=copy.deepcopy(model_cfg["text_cfg"]), quick_gelu=quick_gelu,
                cast_dtype=None)


# ----------------------------------------------------------------------------------------------
# checkpoint reading
# ----------------------------------------------------------------------------------------------
def _is_torchscript_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a CLIP checkpoint file into an OpenAI/open_clip-named float32 state dict.

    Returns (state_dict, info) where info has ``jit`` (an OpenAI JIT archive) and ``openai``
    (looks like OpenAI's own weights: a JIT archive, OpenAI's metadata entries or fp16 weights).
    Raises UserError for a missing, unreadable or non-CLIP file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"model.pretrained: checkpoint file {p} does not exist; {_HOW_TO_PASS}.")
    if not p.is_file():
        raise UserError(f"model.pretrained: {p} is not a file; {_HOW_TO_PASS}.")
    info = {"jit": False, "openai": False, "path": str(p)}
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        elif _is_torchscript_zip(p):
            info["jit"] = True
            obj = torch.jit.load(str(p), map_location="cpu").state_dict()
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure is the user's file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Unsupported global" in str(e):
            raise UserError(f"model.pretrained: {p} holds Python objects besides tensors, which "
                            f"are not loaded for safety (torch.load weights_only=True); save only "
                            f"the state dict (torch.save(model.state_dict(), ...)) and pass that "
                            f"file.") from None
        raise UserError(f"model.pretrained: cannot read {p} as a checkpoint ({msg}); the file is "
                        f"truncated, corrupt or not a PyTorch/safetensors file. Download it "
                        f"again or {_HOW_TO_PASS}.") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"model.pretrained: {p} does not contain a state dict (found "
                        f"{type(obj).__name__}); {_HOW_TO_PASS}.")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if any(k in sd for k in _OPENAI_META_KEYS):
        info["openai"] = True
    for k in _OPENAI_META_KEYS + ("attn_mask",):  # metadata, and a buffer traced archives keep
        sd.pop(k, None)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("clip.") for k in sd):  # a CLIP4Clip checkpoint: take its backbone
        sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    if "text.token_embedding.weight" in sd:  # open_clip CustomTextCLIP layout
        sd = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in sd.items()}
    if "visual.conv1.weight" not in sd or "token_embedding.weight" not in sd:
        raise UserError(f"model.pretrained: {p} is not a CLIP ViT checkpoint (no "
                        f"visual.conv1.weight / token_embedding.weight among its "
                        f"{len(sd)} tensors); {_HOW_TO_PASS}.")
    if info["jit"] or sd["visual.conv1.weight"].dtype == torch.float16:
        info["openai"] = True
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return sd, info


def describe_checkpoint(sd: dict[str, torch.Tensor]) -> str:
    """A short architecture description of an OpenAI-named CLIP state dict."""
    try:
        w = sd["visual.conv1.weight"]
        layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        tlayers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        return (f"patch {w.shape[-1]}, image {w.shape[-1] * grid}, vision width {w.shape[0]} x "
                f"{layers} layers, text width {sd['ln_final.weight'].shape[0]} x {tlayers} layers, "
                f"embed_dim {sd['text_projection'].shape[-1]}")
    except Exception:  # noqa: BLE001
        return "unrecognised layout"


def load_into_clip(clip: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load ``sd`` into ``clip``; a longer text positional embedding is cut to the
    model's context (as the original does). Raises UserError naming ``source`` on mismatch."""
    sd = dict(sd)
    sd.pop("visual.conv2.weight", None)  # handled by the caller (3d patch)
    model_sd = clip.state_dict()
    pe = sd.get("positional_embedding")
    n_ctx = model_sd["positional_embedding"].shape[0]
    if pe is not None and pe.ndim == 2 and pe.shape[0] > n_ctx:
        sd["positional_embedding"] = pe[:n_ctx]
    if "logit_scale" in sd and sd["logit_scale"].ndim != model_sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model_sd["logit_scale"].shape)
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in model_sd.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise UserError(f"model.pretrained: {source} is a checkpoint of another architecture "
                        f"({describe_checkpoint(sd)}) than the configured model "
                        f"({describe_checkpoint(model_sd)}): {'; '.join(parts)}. Set model.name "
                        f"(e.g. ViT-B-32, ViT-B-16) or model.open_clip_config to match the file, "
                        f"or pass the checkpoint of the configured model.")
    clip.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------------------------
# pretrained source resolution
# ----------------------------------------------------------------------------------------------
def _looks_like_path(s: str) -> bool:
    return ("/" in s or "\\" in s or s.startswith(".") or s.startswith("~")
            or Path(s).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname or url
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_tag(name: str, tag: str, pcfg: dict) -> str:
    """Local path of open_clip's weights for (name, tag): the cache when present, else a
    download; offline -> UserError saying how to pass a local file (fails within seconds)."""
    from open_clip import pretrained as ocp

    hf = pcfg.get("hf_hub", "")
    url = pcfg.get("url", "")
    if pcfg.get("file"):
        return pcfg["file"]
    # 1) the local caches, without touching the network
    if hf and ocp.has_hf_hub():
        from huggingface_hub import hf_hub_download

        model_id, filename = hf.rstrip("/").rsplit("/", 1) if not hf.endswith("/") \
            else (hf.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_model.safetensors",
                                             "open_clip_pytorch_model.bin"]
        for fn in names:
            try:
                return hf_hub_download(repo_id=model_id, filename=fn, local_files_only=True)
            except Exception:  # noqa: BLE001
                pass
    if url:
        cached = Path("~/.cache/clip").expanduser() / Path(urlparse(url).path).name
        if cached.is_file():
            return str(cached)
    # 2) the network, only when the host answers quickly
    probe = "https://huggingface.co" if hf else url
    if not _host_reachable(probe):
        raise UserError(f"model.pretrained = {tag!r}: the weights of {name} are not in the local "
                        f"cache and {urlparse(probe).hostname} cannot be reached (offline?). "
                        f"Download them on a machine with network access (e.g. "
                        f"{url or 'https://huggingface.co/' + hf}) and set model.pretrained to "
                        f"the local file path, or use 'none' for random weights.")
    try:
        path = ocp.download_pretrained(pcfg)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"model.pretrained = {tag!r}: downloading the weights of {name} failed "
                        f"({e}); download the file yourself and set model.pretrained to its "
                        f"path.") from None
    if not path:
        raise UserError(f"model.pretrained = {tag!r}: open_clip has no download for {name}; "
                        f"{_HOW_TO_PASS}.")
    return path


def resolve_pretrained(name: str, pretrained: str) -> tuple[Optional[str], Optional[bool]]:
    """Map cfg.model.pretrained to (local file or None for random init, quick_gelu hint)."""
    import open_clip

    p = (pretrained or "none").strip()
    if p.lower() in ("none", "", "random"):
        return None, None
    if Path(p).expanduser().exists() or _looks_like_path(p):
        return p, None
    oc_name = normalize_model_name(name)
    pcfg = open_clip.get_pretrained_cfg(oc_name, p)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(oc_name)
        raise UserError(f"model.pretrained = {p!r} is neither an existing file nor an open_clip "
                        f"tag for {oc_name} (tags: {', '.join(tags) or 'none'}); {_HOW_TO_PASS}.")
    return download_tag(oc_name, p, pcfg), pcfg.get("quick_gelu", False)


# ----------------------------------------------------------------------------------------------
# frames through the image tower, text through the text tower
# ----------------------------------------------------------------------------------------------
def make_conv3d(clip: nn.Module) -> nn.Conv3d:
    """The 3d patch embedding, initialised [0, conv1, 0] over time (equal to 2d at init)."""
    conv1 = clip.visual.conv1
    width, _, p, q = conv1.weight.shape
    conv2 = nn.Conv3d(3, width, kernel_size=(3, p, q), stride=(1, p, q), padding=(1, 0, 0),
                      bias=False)
    init_conv3d_from_conv1(conv2, conv1)
    return conv2


@torch.no_grad()
def init_conv3d_from_conv1(conv2: nn.Conv3d, conv1: nn.Conv2d) -> None:
    k = conv2.weight.shape[2]
    w = torch.zeros_like(conv2.weight)
    w[:, :, (k - 1) // 2] = conv1.weight.to(w.dtype)
    conv2.weight.copy_(w)


def visual_tokens(clip: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """(N, width, g, g) patch embeddings -> (N, D) image features (CLS -> ln_post -> proj)."""
    v = clip.visual
    x = patches.flatten(2).transpose(1, 2)  # (N, g*g, width)
    cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + v.positional_embedding.to(x.dtype)
    x = v.patch_dropout(x)
    x = v.ln_pre(x)
    x = v.transformer(x)
    pooled, _ = v._pool(x)
    if v.proj is not None:
        pooled = pooled @ v.proj
    return pooled


def encode_frames(clip: nn.Module, video: torch.Tensor, conv3d: Optional[nn.Conv3d]) -> torch.Tensor:
    """(B, T, 3, H, W) frames -> (B, T, D) per-frame features, as one (B*T) batch."""
    b, t = video.shape[:2]
    v = clip.visual
    if conv3d is None:
        x = video.reshape(b * t, *video.shape[2:]).to(v.conv1.weight.dtype)
        patches = v.conv1(x)
    else:
        x = video.to(conv3d.weight.dtype).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)
        y = conv3d(x)  # (B, width, T, g, g)
        patches = y.permute(0, 2, 1, 3, 4).reshape(b * t, y.shape[1], y.shape[3], y.shape[4])
    return visual_tokens(clip, patches).reshape(b, t, -1)


def encode_tokens(clip: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """(B, L) token ids -> (B, D) features at the EOT token (the argmax id), as CLIP."""
    n = text.shape[1]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(text).to(cast)
    x = x + clip.positional_embedding[:n].to(cast)
    mask = clip.attn_mask[:n, :n] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def truncate_text_context(clip: nn.Module, max_words: int) -> None:
    """Keep ``max_words`` text positions (the original slices its 77 positions likewise)."""
    n_ctx = clip.positional_embedding.shape[0]
    if max_words > n_ctx:
        raise ConfigError(f"data.max_words = {max_words} exceeds the text context of the model "
                          f"({n_ctx} positions); use at most {n_ctx}.")
    pe = clip.positional_embedding.detach()[:max_words].clone()
    clip.positional_embedding = nn.Parameter(pe)
    mask = torch.full((max_words, max_words), float("-inf")).triu_(1)
    clip.register_buffer("attn_mask", mask, persistent=False)
    clip.context_length = max_words


# ----------------------------------------------------------------------------------------------
# freezing (main_task_retrieval.py's rule, on OpenAI names)
# ----------------------------------------------------------------------------------------------
_ALWAYS_TRAIN = ("ln_final.", "text_projection", "logit_scale", "visual.ln_post.", "visual.proj")


def frozen_by_rule(name: str, freeze_layer_num: int) -> bool:
    """Whether the original freezes the CLIP parameter ``name`` for ``freeze_layer_num``.

    -1: nothing. N >= 0: everything but the top (ln_final, text_projection, logit_scale,
    visual.ln_post, visual.proj) and resblocks >= N, i.e. 0 freezes the token/positional/class
    embeddings, conv1 and ln_pre. The 3d patch (visual.conv2) always trains: the original
    meant that, but its test ``name.find("conv2.")`` is truthy for every other name too, so with
    linear_patch 3d it froze nothing at all (a bug we do not reproduce)."""
    if freeze_layer_num < 0:
        return False
    if name.startswith(_ALWAYS_TRAIN) or name.startswith("visual.conv2."):
        return False
    for prefix in ("visual.transformer.resblocks.", "transformer.resblocks."):
        if name.startswith(prefix):
            return int(name[len(prefix):].split(".")[0]) < freeze_layer_num
    return True


def apply_freeze(clip: nn.Module, freeze_layer_num: int) -> list[str]:
    frozen = []
    for name, p in clip.named_parameters():
        if frozen_by_rule(name, freeze_layer_num):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def warn_random_init(name: str) -> None:
    warnings.warn(f"model.pretrained = 'none': {name} starts from random weights; retrieval "
                  f"will be poor unless you train for long. Pass OpenAI's or open_clip's weights "
                  f"for real use.", stacklevel=3)
