"""Tiny CLIP4Clip models and batches shared by the model tests."""
from __future__ import annotations

import copy
import warnings

import torch

from clip4clip_dali.config import ModelConfig

SOT, EOT = 49406, 49407
TINY = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
MAX_WORDS, MAX_FRAMES, RES = 32, 4, 64


def tiny_cfg(layers: int | None = None, **kw) -> ModelConfig:
    oc = copy.deepcopy(TINY)
    if layers is not None:
        oc["vision_cfg"]["layers"] = layers
        oc["text_cfg"]["layers"] = layers
    kw.setdefault("pretrained", "none")
    kw.setdefault("cross_num_hidden_layers", 2)
    kw.setdefault("freeze_layer_num", -1)
    return ModelConfig(name="tiny", open_clip_config=oc, **kw)


def tiny_model(seed: int = 0, layers: int | None = None, **kw):
    from clip4clip_dali.model import CLIP4Clip

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIP4Clip.from_config(tiny_cfg(layers, **kw), max_words=MAX_WORDS,
                                     max_frames=MAX_FRAMES)


def make_text(n: int, seed: int = 0, words: int = MAX_WORDS) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(n, words, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(1, words - 2, (1,), generator=g))
        text[i, 0] = SOT
        text[i, 1:1 + k] = torch.randint(1, 49000, (k,), generator=g)
        text[i, 1 + k] = EOT
    return text


def make_batch(n: int, seed: int = 0, frames: int = MAX_FRAMES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    lengths = [frames - (i % frames) for i in range(n)]  # full, then shorter clips
    mask = torch.tensor([[1] * k + [0] * (frames - k) for k in lengths], dtype=torch.long)
    video = torch.randn(n, frames, 3, RES, RES, generator=g) * mask[:, :, None, None, None]
    text = make_text(n, seed)
    return {"video": video, "video_mask": mask, "text": text, "text_mask": (text > 0).long()}


# ==============================================================================================
# tests
# ==============================================================================================
import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clip4clip_dali.errors import UserError  # noqa: E402
from clip4clip_dali.loss import contrastive_loss, symmetric_ce  # noqa: E402
from clip4clip_dali.model import CLIP4Clip  # noqa: E402
from clip4clip_dali.model import backbone as bb  # noqa: E402
from clip4clip_dali.model.temporal import masked_mean_pool  # noqa: E402

HEADS = ["meanP", "seqLSTM", "seqTransf", "tightTransf"]


@pytest.mark.parametrize("sim_header", HEADS)
def test_shapes_loss_and_grads(sim_header):
    model = tiny_model(sim_header=sim_header)
    batch = make_batch(3)
    t = model.encode_text(batch["text"], batch["text_mask"])
    v = model.encode_video(batch["video"], batch["video_mask"])
    assert t.shape == (3, 64) and t.dtype == torch.float32
    assert v.shape == (3, MAX_FRAMES, 64) and v.dtype == torch.float32
    sim = model.similarity(t, v[:2], batch["video_mask"][:2])
    assert sim.shape == (3, 2) and torch.isfinite(sim).all()
    assert model.loose_type == (sim_header != "tightTransf")
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    head_params = [p for p in model.head.parameters()]
    assert all(p.grad is not None for p in head_params)
    assert model.clip.visual.conv1.weight.grad is not None
    assert model.clip.logit_scale.grad is not None or not model.loose_type


@pytest.mark.parametrize("sim_header", HEADS)
def test_padded_frames_never_matter(sim_header):
    model = tiny_model(sim_header=sim_header).eval()
    batch = make_batch(4)
    mask = batch["video_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        t = model.encode_text(batch["text"])
        v = model.encode_video(batch["video"], mask)
        ref = model.similarity(t, v, mask)
        # 1) head level: garbage in the padded frame features
        v2 = torch.where(mask[:, :, None].bool(), v, torch.randn_like(v) * 10)
        assert torch.allclose(model.similarity(t, v2, mask), ref, atol=1e-5)
        # 2) input level: garbage in the padded frames
        video2 = torch.where(mask[:, :, None, None, None].bool(), batch["video"],
                             torch.randn_like(batch["video"]))
        v3 = model.encode_video(video2, mask)
        assert torch.allclose(model.similarity(t, v3, mask), ref, atol=1e-5)


def test_padded_frames_never_matter_3d():
    model = tiny_model(sim_header="meanP", linear_patch="3d").eval()
    with torch.no_grad():  # make conv2 use its temporal taps
        model.clip.visual.conv2.weight.add_(torch.randn_like(model.clip.visual.conv2.weight) * .1)
        batch = make_batch(4)
        mask = batch["video_mask"]
        t = model.encode_text(batch["text"])
        ref = model.similarity(t, model.encode_video(batch["video"], mask), mask)
        video2 = torch.where(mask[:, :, None, None, None].bool(), batch["video"],
                             torch.randn_like(batch["video"]))
        got = model.similarity(t, model.encode_video(video2, mask), mask)
    assert torch.allclose(got, ref, atol=1e-5)


def test_3d_patch_equals_2d_at_init():
    model = tiny_model(linear_patch="3d")
    w = model.clip.visual.conv2.weight
    assert w.shape[2] == 3 and torch.equal(w[:, :, 1], model.clip.visual.conv1.weight)
    assert not w[:, :, 0].any() and not w[:, :, 2].any()
    batch = make_batch(2)
    batch["video_mask"][:] = 1
    with torch.no_grad():
        v3 = model.encode_video(batch["video"], batch["video_mask"])
        v2 = bb.encode_frames(model.clip, batch["video"], None)
    assert torch.allclose(v3, v2, atol=1e-5)


def test_text_matches_open_clip_with_full_context():
    """Cutting the 77 positions to max_words keeps CLIP's EOT feature exactly."""
    torch.manual_seed(3)
    clip = bb.build_clip(TINY, quick_gelu=True).eval()
    full = copy.deepcopy(clip)
    model = CLIP4Clip(clip, max_words=MAX_WORDS, max_frames=MAX_FRAMES).eval()
    assert model.clip.positional_embedding.shape[0] == MAX_WORDS
    text = make_text(5)
    padded = torch.zeros(5, 77, dtype=torch.long)
    padded[:, :MAX_WORDS] = text
    with torch.no_grad():
        assert torch.allclose(model.encode_text(text), full.encode_text(padded), atol=1e-5)
        frames = torch.randn(2, MAX_FRAMES, 3, RES, RES)
        ours = model.encode_video(frames, torch.ones(2, MAX_FRAMES))
        theirs = full.encode_image(frames.flatten(0, 1)).view(2, MAX_FRAMES, -1)
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_seqlstm_matches_packed_sequences():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    model = tiny_model(sim_header="seqLSTM").eval()
    frames = torch.randn(4, MAX_FRAMES, 64)
    mask = make_batch(4)["video_mask"]
    with torch.no_grad():
        ours = model.head(frames, mask)
        packed = pack_padded_sequence(frames, mask.sum(-1), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(model.head.lstm_visual(packed)[0], batch_first=True,
                                     total_length=MAX_FRAMES)
        ref = out + frames
    valid = mask.bool()
    assert torch.allclose(ours[valid], ref[valid], atol=1e-5)


def test_seqtransf_and_tight_init_from_clip_text():
    for sh in ("seqTransf", "tightTransf"):
        torch.manual_seed(0)
        clip = bb.build_clip(TINY, quick_gelu=True)
        pos = clip.positional_embedding.detach().clone()
        model = CLIP4Clip(clip, sim_header=sh, max_words=MAX_WORDS, max_frames=MAX_FRAMES,
                          cross_num_hidden_layers=2)
        blocks = (model.head.transformerClip if sh == "seqTransf" else model.head.transformer)
        for i in range(2):
            src = model.clip.transformer.resblocks[i].state_dict()
            for k, v in blocks.resblocks[i].state_dict().items():
                assert torch.equal(v, src[k]), (sh, i, k)
        emb = (model.head.frame_position_embeddings if sh == "seqTransf"
               else model.head.position_embeddings).weight
        assert torch.equal(emb, pos[:emb.shape[0]])


def test_tight_similarity_chunks_and_per_rank_loss():
    model = tiny_model(sim_header="tightTransf").eval()
    batch = make_batch(3)
    with torch.no_grad():
        t = model.encode_text(batch["text"])
        v = model.encode_video(batch["video"], batch["video_mask"])
        full = model.similarity(t, v, batch["video_mask"])
        chunked = model.similarity(t, v, batch["video_mask"], chunk=2)
        assert torch.allclose(full, chunked, atol=1e-5)
        assert torch.allclose(model(batch), symmetric_ce(full), atol=1e-5)


def test_loss_is_the_originals_crossen():
    torch.manual_seed(0)
    t, v = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(20.0)
    sim = scale * t @ v.t()

    def crossen(m):
        return (-torch.diag(F.log_softmax(m, dim=-1))).mean()

    ref = (crossen(sim) + crossen(sim.t())) / 2
    assert torch.allclose(contrastive_loss(t, v, scale), ref, atol=1e-6)
    model = tiny_model()
    batch = make_batch(3)
    tf, vf = model.encode_text(batch["text"]), model.encode_video(batch["video"], batch["video_mask"])
    logits = model.similarity(tf, vf, batch["video_mask"])
    assert torch.allclose(model(batch), (crossen(logits) + crossen(logits.t())) / 2, atol=1e-5)
    assert torch.allclose(masked_mean_pool(vf, batch["video_mask"]),
                          model.video_embedding(vf, batch["video_mask"]))


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def _reference_clip(seed=7):
    torch.manual_seed(seed)
    return bb.build_clip(TINY, quick_gelu=True).eval()


def _features(model, batch):
    with torch.no_grad():
        return (model.encode_text(batch["text"]),
                model.encode_video(batch["video"], batch["video_mask"]))


def _expected(clip, batch):
    """Features straight from open_clip's CLIP (77 positions, its own encode_*)."""
    text = torch.zeros(batch["text"].shape[0], 77, dtype=torch.long)
    text[:, :MAX_WORDS] = batch["text"]
    b, t = batch["video"].shape[:2]
    with torch.no_grad():
        return (clip.encode_text(text),
                clip.encode_image(batch["video"].flatten(0, 1)).view(b, t, -1))


def _save_formats(clip, d):
    sd = {k: v.clone() for k, v in clip.state_dict().items()}
    paths = {}
    openai = dict(sd, input_resolution=torch.tensor(64), context_length=torch.tensor(77),
                  vocab_size=torch.tensor(49408))
    paths["openai_state_dict"] = os.path.join(d, "openai.pt")
    torch.save(openai, paths["openai_state_dict"])
    paths["open_clip_checkpoint"] = os.path.join(d, "epoch_1.pt")
    torch.save({"epoch": 1, "name": "tiny",
                "state_dict": {"module." + k: v for k, v in sd.items()}},
               paths["open_clip_checkpoint"])
    paths["open_clip_bin"] = os.path.join(d, "open_clip_pytorch_model.bin")
    torch.save(sd, paths["open_clip_bin"])
    from safetensors.torch import save_file

    paths["safetensors"] = os.path.join(d, "open_clip_model.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, paths["safetensors"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(clip, {"encode_text": (make_text(2, words=77),)},
                                        check_trace=False)
    paths["jit_archive"] = os.path.join(d, "ViT-tiny.pt")
    torch.jit.save(traced, paths["jit_archive"])
    return paths


def test_checkpoints_load_to_identical_features(tmp_path):
    clip = _reference_clip()
    paths = _save_formats(clip, str(tmp_path))
    batch = make_batch(2)
    exp_t, exp_v = _expected(clip, batch)
    for kind, path in paths.items():
        model = tiny_model(seed=123, pretrained=path).eval()
        t, v = _features(model, batch)
        assert torch.allclose(t, exp_t, atol=1e-5), kind
        assert torch.allclose(v, exp_v, atol=1e-5), kind
        assert torch.equal(model.clip.logit_scale, clip.logit_scale), kind


def test_openai_detection_picks_quick_gelu(tmp_path):
    oc = copy.deepcopy(TINY)
    oc.pop("quick_gelu")
    clip = _reference_clip()
    sd = {k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}
    path = tmp_path / "fp16_openai.pt"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = ModelConfig(name="tiny", open_clip_config=oc, pretrained=str(path),
                          freeze_layer_num=-1)
        model = CLIP4Clip.from_config(cfg, MAX_WORDS, MAX_FRAMES)
        cfg.quick_gelu = False
        gelu_model = CLIP4Clip.from_config(cfg, MAX_WORDS, MAX_FRAMES)
    from open_clip.transformer import QuickGELU

    assert isinstance(model.clip.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not isinstance(gelu_model.clip.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_checkpoint_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        tiny_model(pretrained=str(tmp_path / "nope.pt"))
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(UserError, match="corrupt.pt.*truncated, corrupt"):
        tiny_model(pretrained=str(bad))
    pickled = tmp_path / "objects.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1.0)}, pickled)
    with pytest.raises(UserError, match="objects.pt holds Python objects"):
        tiny_model(pretrained=str(pickled))
    truncated = tmp_path / "truncated.pt"
    torch.save(_reference_clip().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated.pt"):
        tiny_model(pretrained=str(truncated))
    notclip = tmp_path / "notclip.pt"
    torch.save({"weight": torch.zeros(3)}, notclip)
    with pytest.raises(UserError, match="not a CLIP"):
        tiny_model(pretrained=str(notclip))
    # another architecture: patch 8 instead of 16
    other = copy.deepcopy(TINY)
    other["vision_cfg"]["patch_size"] = 8
    torch.manual_seed(0)
    wrong = tmp_path / "patch8.pt"
    torch.save(bb.build_clip(other, True).state_dict(), wrong)
    with pytest.raises(UserError, match=r"patch8\.pt.*another architecture.*patch 8"):
        tiny_model(pretrained=str(wrong))
    # a tag open_clip does not know for this model
    with pytest.raises(UserError, match="neither an existing file nor an open_clip tag"):
        tiny_model(pretrained="laion2b_s34b_b79k")


def test_offline_tag_gives_user_error_quickly(monkeypatch, tmp_path):
    monkeypatch.setattr(bb, "_host_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    t0 = time.time()
    with pytest.raises(UserError, match="local file"):
        bb.resolve_pretrained("ViT-B/32", "laion2b_s34b_b79k")
    assert time.time() - t0 < 20


# ---------------------------------------------------------------------------------------------
# freezing, optimizer groups, logit scale
# ---------------------------------------------------------------------------------------------
def _expected_frozen(names, n):
    out = set()
    for name in names:
        if n < 0:
            continue
        if name.split(".")[0] in ("ln_final", "text_projection", "logit_scale") or \
                name.startswith(("visual.ln_post.", "visual.proj", "visual.conv2.")):
            continue
        if ".resblocks." in name and int(name.split(".resblocks.")[1].split(".")[0]) >= n:
            continue
        out.add(name)
    return out


def test_freeze_layer_num():
    model = tiny_model(layers=5, freeze_layer_num=0)
    frozen = {n for n, p in model.clip.named_parameters() if not p.requires_grad}
    assert frozen == {"token_embedding.weight", "positional_embedding", "visual.class_embedding",
                      "visual.positional_embedding", "visual.conv1.weight", "visual.ln_pre.weight",
                      "visual.ln_pre.bias"}
    model = tiny_model(layers=5, freeze_layer_num=4)
    names = [n for n, _ in model.clip.named_parameters()]
    frozen = {n for n, p in model.clip.named_parameters() if not p.requires_grad}
    assert frozen == _expected_frozen(names, 4)
    assert "transformer.resblocks.3.mlp.c_fc.weight" in frozen
    assert "visual.transformer.resblocks.4.attn.in_proj_weight" not in frozen
    assert all(p.requires_grad for p in model.head.parameters())
    model = tiny_model(layers=5, freeze_layer_num=-1)
    assert all(p.requires_grad for p in model.parameters())
    model = tiny_model(layers=5, freeze_layer_num=2, linear_patch="3d")
    assert model.clip.visual.conv2.weight.requires_grad
    assert not model.clip.visual.conv1.weight.requires_grad


def test_param_groups_and_clamp():
    model = tiny_model(sim_header="seqTransf", freeze_layer_num=0)
    groups = model.param_groups(lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"clip_decay", "clip_no_decay", "new_decay", "new_no_decay"}
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            assert g["lr"] == pytest.approx(1e-7 if n.startswith("clip.") else 1e-4)
            assert g["weight_decay"] == (0.0 if "bias" in n else 0.2)
    decayed = {names[id(p)] for p in by_name["clip_decay"]["params"]}
    assert "clip.ln_final.weight" in decayed  # as the original: ln_* is not 'LayerNorm'
    assert "clip.transformer.resblocks.0.attn.in_proj_bias" in \
        {names[id(p)] for p in by_name["clip_no_decay"]["params"]}
    torch.optim.AdamW(groups)
    with torch.no_grad():
        model.clip.logit_scale.fill_(6.0)
    model.clamp_logit_scale()
    assert float(model.clip.logit_scale) == pytest.approx(math.log(100))


# ---------------------------------------------------------------------------------------------
# grad checkpointing, compile, precision
# ---------------------------------------------------------------------------------------------
def test_grad_checkpointing_same_grads():
    batch = make_batch(3)
    grads = []
    for enable in (False, True):
        model = tiny_model(sim_header="seqTransf")
        model.set_grad_checkpointing(enable)
        assert model.head.transformerClip.grad_checkpointing == enable
        assert model.clip.visual.transformer.grad_checkpointing == enable
        loss = model(batch)
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-6)


def test_compile_fullgraph_meanp():
    torch._dynamo.reset()
    model = tiny_model()
    batch = make_batch(2)
    ref = model(batch)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(batch)
    loss.backward()
    assert torch.allclose(loss, ref, atol=1e-5)
    assert model.clip.visual.conv1.weight.grad is not None


def test_autocast_bf16_cpu():
    model = tiny_model(sim_header="seqTransf")
    batch = make_batch(3)
    ref = model(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)
        t = model.encode_text(batch["text"])
    assert t.dtype == torch.float32
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(float(loss) - float(ref)) < 0.05
    loss.backward()


def test_fp16_weights_mode_cpu():
    model = tiny_model(sim_header="seqTransf", linear_patch="3d")
    batch = make_batch(3)
    ref = model(batch).detach()
    model.convert_clip_to_fp16()
    assert model.clip.visual.conv1.weight.dtype == torch.float16
    assert model.clip.visual.conv2.weight.dtype == torch.float16
    assert model.clip.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.head.parameters())
    loss = model(batch)
    assert torch.isfinite(loss) and abs(float(loss) - float(ref)) < 0.05
    loss.backward()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["amp_fp16", "amp_bf16", "fp16_weights"])
def test_precisions_cuda(mode):
    model = tiny_model(sim_header="seqTransf").cuda()
    batch = {k: v.cuda() for k, v in make_batch(4).items()}
    ref = float(model(batch))
    if mode == "fp16_weights":
        model.convert_clip_to_fp16()
        loss = model(batch)
    else:
        dtype = torch.float16 if mode == "amp_fp16" else torch.bfloat16
        with torch.autocast("cuda", dtype=dtype):
            loss = model(batch)
    assert torch.isfinite(loss) and abs(float(loss) - ref) < 0.05
    loss.backward()


def test_flops_estimates():
    model = tiny_model()
    assert model.flops_per_frame() > 0 and model.flops_per_caption() > 0
    assert model.flops_per_sample() == pytest.approx(
        model.flops_per_caption() + MAX_FRAMES * model.flops_per_frame())
    # ViT-B/32 at 224: ~8.8 GFLOP per frame (DESIGN.md), built without weights
    torch.manual_seed(0)
    cfg = ModelConfig(name="ViT-B/32", pretrained="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = CLIP4Clip(bb.build_clip(bb.resolve_model_config(cfg.name, None), True),
                        max_words=32, max_frames=12)
    assert 8.5e9 < big.flops_per_frame() < 9.0e9
