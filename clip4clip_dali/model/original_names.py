"""The original CLIP4Clip's checkpoint names <-> ours, both ways.

The original's ``save_model`` writes ``model.state_dict()`` as it is: the backbone under
``clip.`` (OpenAI's names, as ours), its conv/linear/attention weights and the two projections in
float16 (``convert_weights``), and the heads under their own names::

    original                               ours
    lstm_visual.*                          head.lstm_visual.*
    frame_position_embeddings.weight       head.frame_position_embeddings.weight
    transformerClip.*                      head.transformerClip.*
    cross.embeddings.position_embeddings.* head.position_embeddings.*
    cross.transformer.*                    head.transformer.*
    cross.pooler.ln_pool.* / .dense.*      head.ln_pool.* / head.dense.*
    similarity_dense.*                     head.similarity_dense.*

Row counts differ: the original keeps CLIP's whole text context (77 rows for the real CLIP) in
``clip.positional_embedding``, ``frame_position_embeddings`` and the cross encoder's positions
and reads the first ``max_words``, ``max_frames`` and ``1 + max_frames``; ours stores only those.
seqLSTM's ``frame_position_embeddings`` is built by the original but never read.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import UserError

# (original prefix, our prefix); the first match wins
_PREFIXES = (
    ("lstm_visual.", "head.lstm_visual."),
    ("frame_position_embeddings.", "head.frame_position_embeddings."),
    ("transformerClip.", "head.transformerClip."),
    ("cross.embeddings.position_embeddings.", "head.position_embeddings."),
    ("cross.transformer.", "head.transformer."),
    ("cross.pooler.ln_pool.", "head.ln_pool."),
    ("cross.pooler.dense.", "head.dense."),
    ("similarity_dense.", "head.similarity_dense."),
    ("clip.", "clip."),
)
HEAD_PREFIXES = tuple(o for o, _ in _PREFIXES if o != "clip.")
# keys the original's checkpoints may carry that are no weights (OpenAI's JIT metadata)
_IGNORED = ("clip.input_resolution", "clip.context_length", "clip.vocab_size")
# what convert_weights stores in float16: conv/linear/attention weights and the projections
_FP16 = re.compile(r"^clip\.(.*(conv1|conv2)\.weight|.*\.attn\.(in_proj_weight|in_proj_bias|"
                   r"out_proj\.weight|out_proj\.bias)|.*\.mlp\.(c_fc|c_proj)\.(weight|bias)|"
                   r"text_projection|visual\.proj)$")
_TEXT_POS = "clip.positional_embedding"
_FRAME_POS = "frame_position_embeddings.weight"
_CROSS_POS = "cross.embeddings.position_embeddings.weight"


class OriginalCheckpointError(UserError):
    """An original-format checkpoint that does not fit the configured model."""


def original_dtype(name: str) -> torch.dtype:
    """The dtype the original's ``save_model`` writes the tensor ``name`` in (floating ones)."""
    return torch.float16 if _FP16.match(name) else torch.float32


def to_our_name(name: str) -> str:
    for orig, ours in _PREFIXES:
        if name.startswith(orig):
            return ours + name[len(orig):]
    raise KeyError(name)


def to_original_name(name: str) -> str:
    for orig, ours in _PREFIXES:
        if name.startswith(ours):
            return orig + name[len(ours):]
    raise KeyError(name)


def is_original(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for a state dict in the original's names (no ``head.`` keys, a ``clip.`` backbone
    and only names the original writes). Our own meanP checkpoints match too: for them the
    mapping is the identity."""
    keys = list(sd)
    return (any(k.startswith("clip.") for k in keys) and not any(k.startswith("head.") for k in keys)
            and all(k.startswith(("clip.",) + HEAD_PREFIXES) for k in keys))


def original_sim_header(sd: Mapping[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith(("cross.", "similarity_dense.")) for k in keys):
        return "tightTransf"
    if any(k.startswith("transformerClip.") for k in keys):
        return "seqTransf"
    if any(k.startswith("lstm_visual.") for k in keys):
        return "seqLSTM"
    return "meanP"


def _layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _rows(sd, key: str, needed: int, what: str, fix: str, source: str) -> None:
    if key in sd and sd[key].shape[0] < needed:
        raise OriginalCheckpointError(f"{source}: {key} has {sd[key].shape[0]} rows but the model "
                                      f"reads {needed} ({what}); {fix}.")


def check_fits(sd: Mapping[str, torch.Tensor], *, sim_header: str, linear_patch: str,
               max_words: int, max_frames: int, cross_layers: int, source: str) -> None:
    """Raise OriginalCheckpointError naming the config fix when ``sd`` (original names) was
    trained with another head, patch embedding, cross depth, or fewer positions."""
    theirs = original_sim_header(sd)
    if theirs != sim_header:
        example = next((k for k in sd if k.startswith(HEAD_PREFIXES)), "only clip.* keys")
        raise OriginalCheckpointError(
            f"{source}: this checkpoint was trained with sim_header {theirs} (it holds "
            f"{example}) but model.sim_header is {sim_header}; set model.sim_header: {theirs} "
            f"(--set model.sim_header={theirs}).")
    has_conv2 = "clip.visual.conv2.weight" in sd
    if has_conv2 and linear_patch != "3d":
        raise OriginalCheckpointError(
            f"{source}: this checkpoint has a 3d patch embedding (clip.visual.conv2.weight) but "
            f"model.linear_patch is {linear_patch}; set model.linear_patch: 3d "
            f"(--set model.linear_patch=3d).")
    if not has_conv2 and linear_patch == "3d":
        raise OriginalCheckpointError(
            f"{source}: model.linear_patch is 3d but this checkpoint has no "
            f"clip.visual.conv2.weight (it was trained with the 2d patch); set "
            f"model.linear_patch: 2d (--set model.linear_patch=2d).")
    prefix = {"seqTransf": "transformerClip.resblocks.",
              "tightTransf": "cross.transformer.resblocks."}.get(theirs)
    if prefix is not None:
        n = _layers(sd, prefix)
        if n != cross_layers:
            raise OriginalCheckpointError(
                f"{source}: this checkpoint's {theirs} head has {n} layers ({prefix}0..{n - 1}) "
                f"but model.cross_num_hidden_layers is {cross_layers}; set "
                f"model.cross_num_hidden_layers: {n} (--set model.cross_num_hidden_layers={n}).")
    _rows(sd, _TEXT_POS, max_words, "data.max_words", "lower data.max_words", source)
    if theirs == "seqTransf":
        _rows(sd, _FRAME_POS, max_frames, "data.max_frames", "lower data.max_frames", source)
    if theirs == "tightTransf":
        _rows(sd, _CROSS_POS, 1 + max_frames, "1 + data.max_frames", "lower data.max_frames",
              source)


def from_original(sd: Mapping[str, torch.Tensor], *, sim_header: str, linear_patch: str,
                  max_words: int, max_frames: int, cross_layers: int,
                  source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Original names -> ours, positions cut to the rows the model reads, float32."""
    sd = {k: v for k, v in sd.items() if k not in _IGNORED}
    check_fits(sd, sim_header=sim_header, linear_patch=linear_patch, max_words=max_words,
               max_frames=max_frames, cross_layers=cross_layers, source=source)
    rows = {_TEXT_POS: max_words, _FRAME_POS: max_frames, _CROSS_POS: 1 + max_frames}
    out = {}
    for k, v in sd.items():
        if k == _FRAME_POS and sim_header == "seqLSTM":
            continue  # built by the original, never read
        if k in rows:
            v = v[:rows[k]]
        out[to_our_name(k)] = v.float() if v.is_floating_point() else v
    return out


def to_original(sd: Mapping[str, torch.Tensor], *, context_length: int,
                dtype: str = "original") -> dict[str, torch.Tensor]:
    """Our names -> the original's, positions padded with zeros to ``context_length`` rows (the
    original never reads those), CLIP's conv/linear/attention weights in float16 as the
    original saves them (``dtype="original"``) or everything float32 (``"float32"``)."""
    if dtype not in ("original", "float32"):
        raise ValueError(f"dtype must be 'original' or 'float32', got {dtype!r}")
    out = {}
    for k, v in sd.items():
        name = to_original_name(k)
        v = v.detach().cpu()
        if name in (_TEXT_POS, _FRAME_POS, _CROSS_POS) and v.shape[0] < context_length:
            v = torch.cat([v, v.new_zeros(context_length - v.shape[0], *v.shape[1:])])
        if v.is_floating_point():
            v = v.to(original_dtype(name)) if dtype == "original" else v.float()
        out[name] = v.contiguous()
    if "lstm_visual.weight_ih_l0" in out and _FRAME_POS not in out:
        width = out["lstm_visual.weight_ih_l0"].shape[1]
        out[_FRAME_POS] = torch.zeros(context_length, width)  # the original builds it
    return out
