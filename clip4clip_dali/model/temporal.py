"""CLIP4Clip similarity heads: meanP, seqLSTM, seqTransf (loose type) and tightTransf.

Loose heads map per-frame features (B, T, D) to per-frame features (B, T, D); the video
embedding is then the original's pooling: L2 per frame, mean over valid frames, L2
(:func:`masked_mean_pool`). Padded frames (mask 0) never change a valid output: the LSTM runs
left to right over masks that are a prefix (valid frames first, as the loaders produce), and the
transformers mask padded keys with -1e6 as the original does.

tightTransf scores every (text, video) pair with a cross encoder over [text EOT feature; frames].
"""
from __future__ import annotations

import logging
import warnings
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, QuickGELU, Transformer

log = logging.getLogger(__name__)

MASK_VALUE = -1000000.0  # the original's additive mask value


def masked_mean_pool(frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """L2 per frame, mean over frames with mask 1 (count clamped to 1), L2 again -> (B, D)."""
    x = F.normalize(frames.float(), dim=-1)
    m = video_mask.to(x.dtype).unsqueeze(-1)
    x = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    return F.normalize(x, dim=-1)


def key_padding_additive_mask(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S) 0/1 mask -> (B*heads, S, S) additive float mask hiding keys with mask 0."""
    b, s = mask.shape
    add = (1.0 - mask.float()).unsqueeze(1) * MASK_VALUE  # (B, 1, S)
    return add.expand(b, s, s).repeat_interleave(heads, dim=0)


def _cross_transformer(width: int, layers: int, heads: int) -> Transformer:
    # module_cross.Transformer of the original: QuickGELU blocks with TF-style LayerNorm(1e-12)
    return Transformer(width=width, layers=layers, heads=heads, act_layer=QuickGELU,
                       norm_layer=partial(LayerNorm, eps=1e-12))


@torch.no_grad()
def init_blocks_from_clip(target: Transformer, clip: nn.Module) -> bool:
    """Copy CLIP text blocks 0..N-1 into ``target``; False (random init) when they don't fit."""
    src = clip.transformer.resblocks
    if len(src) < len(target.resblocks):
        return False
    for i, blk in enumerate(target.resblocks):
        sd = src[i].state_dict()
        own = blk.state_dict()
        if set(sd) != set(own) or any(sd[k].shape != own[k].shape for k in own):
            return False
    for i, blk in enumerate(target.resblocks):
        blk.load_state_dict({k: v.float() for k, v in src[i].state_dict().items()})
    return True


@torch.no_grad()
def _random_init_blocks(t: Transformer) -> None:
    proj_std = (t.width ** -0.5) * ((2 * t.layers) ** -0.5)
    attn_std = t.width ** -0.5
    fc_std = (2 * t.width) ** -0.5
    for block in t.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


@torch.no_grad()
def _init_positions(emb: nn.Embedding, text_pos: torch.Tensor | None) -> bool:
    if text_pos is None or text_pos.shape[1] != emb.weight.shape[1]:
        return False
    n = min(emb.weight.shape[0], text_pos.shape[0])
    emb.weight[:n].copy_(text_pos[:n].float())
    return n == emb.weight.shape[0]


def _heads_for(width: int, text_width: int, text_heads: int) -> int:
    if width == text_width:
        return text_heads
    return max(1, width // 64) if width % 64 == 0 else 1


class MeanP(nn.Module):
    """Parameter-free: the frames as they are (pooling does the rest)."""

    def forward(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        return frames


class SeqLSTM(nn.Module):
    """1-layer LSTM over the frames plus the original frames (residual).

    The original packs the sequences by length; for prefix masks the causal LSTM gives the same
    outputs on valid frames without packing (no host sync, compilable); padded positions differ
    but are never pooled."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm_visual = nn.LSTM(input_size=dim, hidden_size=dim, batch_first=True,
                                   bidirectional=False, num_layers=1)

    def forward(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        x = frames.float()
        y, _ = self.lstm_visual(x)
        return y + x


class SeqTransf(nn.Module):
    """Frame position embeddings + residual attention blocks (from CLIP text blocks 0..N-1)
    with padded frames masked as keys, plus the original frames (residual)."""

    def __init__(self, dim: int, layers: int, heads: int, max_frames: int):
        super().__init__()
        self.heads = heads
        self.max_frames = max_frames
        self.frame_position_embeddings = nn.Embedding(max_frames, dim)
        self.transformerClip = _cross_transformer(dim, layers, heads)

    def init_from_clip(self, clip: nn.Module, text_pos: torch.Tensor | None) -> None:
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.02)
        ok_pos = _init_positions(self.frame_position_embeddings, text_pos)
        ok_blocks = init_blocks_from_clip(self.transformerClip, clip)
        if not ok_blocks:
            _random_init_blocks(self.transformerClip)
        if not (ok_pos and ok_blocks):
            warnings.warn("seqTransf: the CLIP text tower does not match the head (width or "
                          "depth); its blocks/positions start from random weights.", stacklevel=3)

    def forward(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        x0 = frames.float()
        t = x0.shape[1]
        if t > self.max_frames:
            raise ValueError(f"seqTransf was built for at most {self.max_frames} frames, got {t}")
        x = x0 + self.frame_position_embeddings.weight[:t].unsqueeze(0)
        x = self.transformerClip(x, attn_mask=key_padding_additive_mask(video_mask, self.heads))
        return x + x0


class TightTransf(nn.Module):
    """The original's CrossModel + similarity_dense (loose_type False): for each (text, video)
    pair, [text EOT feature; frames] + positions -> dropout -> blocks (padded frames masked as
    keys) -> ln_pool -> first token -> Linear + QuickGELU -> Linear(->1)."""

    def __init__(self, dim: int, layers: int, heads: int, max_frames: int, dropout: float = 0.1):
        super().__init__()
        self.heads = heads
        self.max_frames = max_frames
        self.position_embeddings = nn.Embedding(1 + max_frames, dim)
        self.dropout = nn.Dropout(dropout)
        self.transformer = _cross_transformer(dim, layers, heads)
        self.ln_pool = nn.LayerNorm(dim, eps=1e-12)
        self.dense = nn.Linear(dim, dim)
        self.activation = QuickGELU()
        self.similarity_dense = nn.Linear(dim, 1)

    def init_from_clip(self, clip: nn.Module, text_pos: torch.Tensor | None) -> None:
        with torch.no_grad():  # the original's BERT-style init for the new layers
            for lin in (self.dense, self.similarity_dense):
                lin.weight.normal_(0.0, 0.02)
                lin.bias.zero_()
            self.ln_pool.weight.fill_(1.0)
            self.ln_pool.bias.zero_()
            self.position_embeddings.weight.normal_(0.0, 0.02)
        ok_pos = _init_positions(self.position_embeddings, text_pos)
        ok_blocks = init_blocks_from_clip(self.transformer, clip)
        if not ok_blocks:
            _random_init_blocks(self.transformer)
        if not (ok_pos and ok_blocks):
            warnings.warn("tightTransf: the CLIP text tower does not match the cross encoder "
                          "(width or depth); it starts from random weights.", stacklevel=3)

    def forward(self, text_feat: torch.Tensor, frames: torch.Tensor,
                video_mask: torch.Tensor) -> torch.Tensor:
        """text_feat (Nt, D), frames (Nv, T, D), video_mask (Nv, T) -> logits (Nt, Nv)."""
        nt, d = text_feat.shape
        nv, t, _ = frames.shape
        if t > self.max_frames:
            raise ValueError(f"tightTransf was built for at most {self.max_frames} frames, got {t}")
        text_feat = text_feat.float()
        frames = frames.float()
        x = torch.cat([text_feat[:, None, None, :].expand(nt, nv, 1, d),
                       frames[None].expand(nt, nv, t, d)], dim=2).reshape(nt * nv, 1 + t, d)
        m = torch.cat([torch.ones_like(video_mask[:, :1]), video_mask], dim=1)
        m = m[None].expand(nt, nv, 1 + t).reshape(nt * nv, 1 + t)
        x = x + self.position_embeddings.weight[:1 + t].unsqueeze(0)
        x = self.dropout(x)
        x = self.transformer(x, attn_mask=key_padding_additive_mask(m, self.heads))
        pooled = self.activation(self.dense(self.ln_pool(x)[:, 0]))
        return self.similarity_dense(pooled).view(nt, nv)


def build_head(sim_header: str, clip: nn.Module, embed_dim: int, max_frames: int,
               cross_num_hidden_layers: int, text_pos: torch.Tensor | None) -> nn.Module:
    text_width = clip.transformer.width
    text_heads = clip.transformer.resblocks[0].attn.num_heads
    heads = _heads_for(embed_dim, text_width, text_heads)
    if sim_header == "meanP":
        return MeanP()
    if sim_header == "seqLSTM":
        return SeqLSTM(embed_dim)
    if sim_header == "seqTransf":
        head = SeqTransf(embed_dim, cross_num_hidden_layers, heads, max_frames)
    elif sim_header == "tightTransf":
        head = TightTransf(embed_dim, cross_num_hidden_layers, heads, max_frames)
    else:
        raise ValueError(f"unknown sim_header {sim_header!r}")
    head.init_from_clip(clip, text_pos)
    return head
