"""CLIP4Clip (arXiv 2104.08860) on open_clip towers.

Features and similarity::

    t = model.encode_text(text, text_mask)          # (Nt, D) float32, CLIP text feature at EOT
    v = model.encode_video(video, video_mask)       # (Nv, T, D) float32, per-frame CLS features
    s = model.similarity(t, v, video_mask)          # (Nt, Nv) logits

For the loose heads (meanP, seqLSTM, seqTransf) ``similarity`` is ``logit_scale.exp() *
normalize(t) @ model.video_embedding(v, mask).T`` -- the training logits; evaluation may
precompute ``text_embedding``/``video_embedding`` once and take dot products (the scale does not
change any ranking). For tightTransf the "text feature" the head needs is exactly that EOT
feature (the original feeds only the EOT token to its cross encoder, with text mask of ones),
so the API stays the same; ``similarity`` runs the cross encoder on every pair (``chunk`` text
rows at a time) and its logits carry no logit_scale, as in the original.

``model(batch)`` returns the training loss: symmetric cross entropy of the logits over the
global batch (features all-gathered with gradient, see :mod:`clip4clip_dali.loss`), or per
rank for tightTransf.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loss import contrastive_loss, symmetric_ce
from . import backbone as bb
from .temporal import build_head, masked_mean_pool

SIM_HEADERS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
LOGIT_SCALE_MAX = math.log(100.0)
# the original's no-decay rule (prep_optimizer): substrings of the parameter name
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


class CLIP4Clip(nn.Module):
    def __init__(self, clip: nn.Module, *, sim_header: str = "meanP", linear_patch: str = "2d",
                 max_words: int = 32, max_frames: int = 12, cross_num_hidden_layers: int = 4,
                 freeze_layer_num: int = -1, text_pos: Optional[torch.Tensor] = None,
                 conv2_weight: Optional[torch.Tensor] = None, local_loss: bool = False):
        super().__init__()
        if sim_header not in SIM_HEADERS:
            raise ValueError(f"sim_header must be one of {SIM_HEADERS}, got {sim_header!r}")
        if linear_patch not in ("2d", "3d"):
            raise ValueError(f"linear_patch must be '2d' or '3d', got {linear_patch!r}")
        self.sim_header = sim_header
        self.linear_patch = linear_patch
        self.loose_type = sim_header != "tightTransf"
        self.max_words = max_words
        self.max_frames = max_frames
        self.local_loss = local_loss
        self.clip = clip
        self.embed_dim = int(clip.text_projection.shape[-1])
        if text_pos is None:
            text_pos = clip.positional_embedding.detach().clone()
        if linear_patch == "3d":
            clip.visual.conv2 = bb.make_conv3d(clip)
            if conv2_weight is not None and conv2_weight.shape == clip.visual.conv2.weight.shape:
                with torch.no_grad():
                    clip.visual.conv2.weight.copy_(conv2_weight.float())
        self.head = build_head(sim_header, clip, self.embed_dim, max_frames,
                               cross_num_hidden_layers, text_pos)
        bb.truncate_text_context(clip, max_words)
        self.frozen_names = bb.apply_freeze(clip, freeze_layer_num)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg_model: Any, max_words: int, max_frames: int,
                    local_loss: bool = False) -> "CLIP4Clip":
        """Build from ``cfg.model`` (name/open_clip_config, pretrained, linear_patch,
        sim_header, cross_num_hidden_layers, freeze_layer_num, quick_gelu)."""
        name = cfg_model.name
        model_cfg = bb.resolve_model_config(name, getattr(cfg_model, "open_clip_config", None))
        path, tag_quick_gelu = bb.resolve_pretrained(name, getattr(cfg_model, "pretrained", "none"))
        sd, info = (bb.read_checkpoint(path) if path is not None else (None, {}))
        quick_gelu = getattr(cfg_model, "quick_gelu", None)
        if quick_gelu is None:
            quick_gelu = bool(model_cfg.get("quick_gelu", False) or tag_quick_gelu
                              or info.get("openai", False))
        clip = bb.build_clip(model_cfg, quick_gelu=quick_gelu)
        n_ctx = clip.positional_embedding.shape[0]
        if max_words > n_ctx:
            from ..config import ConfigError
            raise ConfigError(f"data.max_words = {max_words} exceeds the text context of "
                              f"{name} ({n_ctx} positions); use at most {n_ctx}.")
        conv2_weight = None
        if sd is not None:
            bb.load_into_clip(clip, sd, path)
            conv2_weight = sd.get("visual.conv2.weight")
        else:
            bb.warn_random_init(name)
        return cls(clip, sim_header=cfg_model.sim_header, linear_patch=cfg_model.linear_patch,
                   max_words=max_words, max_frames=max_frames,
                   cross_num_hidden_layers=cfg_model.cross_num_hidden_layers,
                   freeze_layer_num=cfg_model.freeze_layer_num, conv2_weight=conv2_weight,
                   local_loss=local_loss)

    # ------------------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def encode_text(self, text: torch.Tensor, text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) ids -> (B, D) float32 EOT features. ``text_mask`` is accepted for symmetry;
        CLIP's causal mask already keeps the padding after EOT out of the EOT feature."""
        if text.shape[1] > self.max_words:
            raise ValueError(f"text has {text.shape[1]} tokens; the model keeps {self.max_words}")
        return bb.encode_tokens(self.clip, text).float()

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) frames, (B, T) mask -> (B, T, D) float32 per-frame features.

        With linear_patch 3d, padded frames are zeroed first (they are zeros from the loaders
        anyway) so their content never leaks into neighbouring valid frames."""
        conv3d = self.clip.visual.conv2 if self.linear_patch == "3d" else None
        if conv3d is not None:
            video = video * video_mask.to(video.dtype)[:, :, None, None, None]
        return bb.encode_frames(self.clip, video, conv3d).float()

    def text_embedding(self, text_feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(text_feat.float(), dim=-1)

    def video_embedding(self, video_feat: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Loose heads: (B, T, D) frames -> (B, D) L2-normalised video embedding."""
        if not self.loose_type:
            raise RuntimeError("tightTransf has no video embedding; use similarity()")
        return masked_mean_pool(self.head(video_feat, video_mask), video_mask)

    def similarity(self, text_feat: torch.Tensor, video_feat: torch.Tensor,
                   video_mask: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """(Nt, D) text features, (Nv, T, D) frame features -> (Nt, Nv) logits."""
        if self.loose_type:
            t = self.text_embedding(text_feat)
            v = self.video_embedding(video_feat, video_mask)
            return self.clip.logit_scale.exp().float() * t @ v.t()
        if chunk <= 0 or chunk >= text_feat.shape[0]:
            return self.head(text_feat, video_feat, video_mask)
        return torch.cat([self.head(t, video_feat, video_mask)
                          for t in text_feat.split(chunk)], dim=0)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.encode_text(batch["text"], batch.get("text_mask"))
        v = self.encode_video(batch["video"], batch["video_mask"])
        mask = batch["video_mask"]
        if self.loose_type:
            return contrastive_loss(self.text_embedding(t), self.video_embedding(v, mask),
                                    self.clip.logit_scale.exp(), local_loss=self.local_loss)
        return symmetric_ce(self.head(t, v, mask).float())  # per rank, as the original

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.clip.logit_scale.clamp_(max=LOGIT_SCALE_MAX)

    def param_groups(self, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
        """The original's four groups: CLIP (``clip.``) parameters at lr*coef_lr, new ones at lr;
        no weight decay for names containing 'bias' / 'LayerNorm.bias' / 'LayerNorm.weight'
        (so, as in the original, CLIP's ln_* weights and embeddings are decayed). Frozen
        parameters are left out. Each group has a 'name'."""
        groups: dict[str, dict] = {}
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_clip = n.startswith("clip.")
            decay = not any(nd in n for nd in NO_DECAY)
            key = f"{'clip' if is_clip else 'new'}_{'decay' if decay else 'no_decay'}"
            if key not in groups:
                groups[key] = {"name": key, "params": [], "lr": lr * coef_lr if is_clip else lr,
                               "weight_decay": weight_decay if decay else 0.0}
            groups[key]["params"].append(p)
        order = ["clip_decay", "new_decay", "clip_no_decay", "new_no_decay"]
        return [groups[k] for k in order if k in groups]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)
        for m in self.head.modules():
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    def convert_clip_to_fp16(self) -> None:
        """The original's precision mode: CLIP's conv/linear/attention weights and projections
        in fp16 (LayerNorms computed in fp32, embeddings fp32), the heads in fp32. Features are
        returned as float32."""
        from open_clip.model import convert_weights_to_lp
        from open_clip.transformer import LayerNorm, LayerNormFp32

        convert_weights_to_lp(self.clip, torch.float16)
        conv2 = getattr(self.clip.visual, "conv2", None)
        if conv2 is not None:
            conv2.half()
        for m in self.clip.modules():
            if type(m) is LayerNorm:
                m.__class__ = LayerNormFp32

    # ------------------------------------------------------------------------------------------
    def flops_per_frame(self) -> float:
        """Forward FLOPs of the image tower for one frame (multiply by 3 for fwd+bwd)."""
        v = self.clip.visual
        width = v.conv1.weight.shape[0]
        p = v.conv1.weight.shape[-1]
        tokens = v.positional_embedding.shape[0]
        layers = len(v.transformer.resblocks)
        mlp = v.transformer.resblocks[0].mlp.c_fc.out_features
        per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
        k = 3 if self.linear_patch == "3d" else 1
        patch = 2 * (tokens - 1) * 3 * p * p * width * k
        proj = 2 * width * (v.proj.shape[-1] if v.proj is not None else 0)
        return float(layers * per_layer + patch + proj)

    def flops_per_caption(self) -> float:
        """Forward FLOPs of the text tower for one caption of max_words tokens."""
        c = self.clip
        width = c.transformer.width
        n = self.max_words
        layers = len(c.transformer.resblocks)
        mlp = c.transformer.resblocks[0].mlp.c_fc.out_features
        per_layer = 2 * n * (4 * width * width + 2 * width * mlp) + 4 * n * n * width
        return float(layers * per_layer + 2 * width * self.embed_dim)

    def flops_per_sample(self, frames: Optional[int] = None) -> float:
        """Forward FLOPs per training sample (one caption + ``frames`` frames, default
        max_frames), backbone only (heads are negligible except tightTransf's B^2 pairs)."""
        t = self.max_frames if frames is None else frames
        return self.flops_per_caption() + t * self.flops_per_frame()
