"""Atomic checkpoints: a SIGKILL mid-write leaves the previous file loadable; safe loading."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clip4clip_dali import checkpoint as ckpt

WRITER = r"""
import sys, torch
from clip4clip_dali.checkpoint import atomic_save
path = sys.argv[1]
atomic_save({"gen": torch.tensor(0), "w": torch.zeros(10)}, path)
print("first", flush=True)
big = torch.randn(40_000_000)  # 160 MB: each write takes a while
i = 1
while True:
    atomic_save({"gen": torch.tensor(i), "w": big}, path)
    i += 1
"""


def test_sigkill_during_write_keeps_previous(tmp_path):
    path = tmp_path / "latest.pt"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "first"
        deadline = time.time() + 60
        while not list(tmp_path.glob(".latest.pt.tmp.*")) and time.time() < deadline:
            time.sleep(0.005)
        assert list(tmp_path.glob(".latest.pt.tmp.*")), "writer never started a second write"
        time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    obj = ckpt.load(path)  # weights_only, must not raise
    assert "gen" in obj and "w" in obj
    # the next save cleans the dead writer's temporary file
    ckpt.atomic_save({"x": torch.ones(1)}, path)
    assert not list(tmp_path.glob(".latest.pt.tmp.*"))


def test_corrupt_and_missing_are_user_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load(bad)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "nope.pt")


def test_full_state_roundtrip_weights_only(tmp_path):
    from clip4clip_dali.optim import BertAdam, LRScheduler

    model = torch.nn.Linear(3, 2)
    opt = BertAdam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = LRScheduler(opt, "warmup_cosine", 10, 0.1)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.full_state(model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=1,
                            step=5, batch_in_epoch=2, config={"train": {"lr": 0.1}})
    expect = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.atomic_save(state, tmp_path / "s.pt")
    obj = torch.load(tmp_path / "s.pt", weights_only=True)
    ckpt.set_rng_state(obj["rng"])
    assert (random.random(), np.random.rand()) == expect[:2]
    assert torch.equal(torch.rand(1), expect[2])
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(ckpt.model_state(obj))
    assert torch.equal(m2.weight, model.weight)
    opt2 = BertAdam(m2.parameters(), lr=0.1)
    opt2.load_state_dict(obj["optimizer"])
    assert obj["batch_in_epoch"] == 2 and obj["config"]["train"]["lr"] == 0.1


# ============================================================================== the original's
# checkpoints: loading (init_model / evaluation), refusals, export back
import warnings  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import golden_data as G  # noqa: E402
from clip4clip_dali.model import original_names as on  # noqa: E402

VIT_B32_HEADS = [("meanP", "2d"), ("meanP", "3d"), ("seqLSTM", "2d"), ("seqTransf", "2d"),
                 ("seqTransf", "3d"), ("tightTransf", "2d")]


@pytest.fixture(scope="module")
def vit_b32_clip():
    """Random ViT-B/32 backbone weights in our names (float16 numbers, as the original stores
    CLIP's matrices, so a float16 export is exact), shared by every head."""
    from clip4clip_dali.model import backbone as bb

    cfg = bb.resolve_model_config("ViT-B-32", None)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in bb.build_clip(cfg, quick_gelu=True).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    return cfg, {f"clip.{k}": torch.randn(s, generator=g).half().float() for k, s in shapes.items()}


def _our_state_b32(cfg, clip_sd, sim_header, linear_patch, max_words=32, max_frames=12):
    from clip4clip_dali.model import CLIP4Clip
    from clip4clip_dali.model import backbone as bb

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CLIP4Clip(bb.build_clip(cfg, quick_gelu=True), sim_header=sim_header,
                          linear_patch=linear_patch, max_words=max_words, max_frames=max_frames,
                          cross_num_hidden_layers=4)
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, v in model.state_dict().items():
        if k in clip_sd:
            sd[k] = clip_sd[k][:v.shape[0]] if k == "clip.positional_embedding" else clip_sd[k]
        else:
            sd[k] = torch.randn(v.shape, generator=g).half().float()
    return sd


@pytest.mark.parametrize("sim_header,linear_patch", VIT_B32_HEADS)
def test_export_and_import_round_trip_vit_b32(vit_b32_clip, sim_header, linear_patch):
    cfg, clip_sd = vit_b32_clip
    ours = _our_state_b32(cfg, clip_sd, sim_header, linear_patch)
    orig = on.to_original(ours, context_length=77)
    # the original's layout: 77 position rows, CLIP's matrices float16, the rest float32
    assert orig["clip.positional_embedding"].shape == (77, 512)
    assert orig["clip.visual.conv1.weight"].dtype == torch.float16
    assert orig["clip.transformer.resblocks.11.attn.in_proj_weight"].dtype == torch.float16
    assert orig["clip.visual.proj"].dtype == orig["clip.text_projection"].dtype == torch.float16
    for k in ("clip.token_embedding.weight", "clip.ln_final.weight", "clip.logit_scale",
              "clip.visual.class_embedding", "clip.visual.positional_embedding"):
        assert orig[k].dtype == torch.float32, k
    assert ("clip.visual.conv2.weight" in orig) == (linear_patch == "3d")
    assert not any(k.startswith("head.") for k in orig)
    if sim_header in ("seqLSTM", "seqTransf"):
        assert orig["frame_position_embeddings.weight"].shape == (77, 512)
    if sim_header == "seqLSTM":
        assert orig["lstm_visual.weight_ih_l0"].shape == (2048, 512)
    if sim_header == "seqTransf":
        assert orig["transformerClip.resblocks.3.mlp.c_fc.weight"].dtype == torch.float32
    if sim_header == "tightTransf":
        assert orig["cross.embeddings.position_embeddings.weight"].shape == (77, 512)
        assert {"cross.pooler.ln_pool.weight", "cross.pooler.dense.weight",
                "similarity_dense.weight"} <= set(orig)
    assert on.original_sim_header(orig) == sim_header and on.is_original(orig)
    back = on.from_original(orig, sim_header=sim_header, linear_patch=linear_patch,
                            max_words=32, max_frames=12, cross_layers=4)
    assert set(back) == set(ours)
    for k, v in ours.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_original_checkpoint_refused_with_the_fix():
    orig = G.original_state("seqLSTM_2d")
    kw = dict(linear_patch="2d", max_words=32, max_frames=6, cross_layers=2, source="x.bin")
    with pytest.raises(on.OriginalCheckpointError, match="model.sim_header=seqLSTM"):
        on.from_original(orig, sim_header="meanP", **kw)
    orig3d = dict(orig, **{"clip.visual.conv2.weight": torch.zeros(128, 3, 3, 8, 8)})
    with pytest.raises(on.OriginalCheckpointError, match="model.linear_patch=3d"):
        on.from_original(orig3d, sim_header="seqLSTM", **kw)
    with pytest.raises(on.OriginalCheckpointError, match="model.linear_patch=2d"):
        on.from_original(orig, sim_header="seqLSTM", **dict(kw, linear_patch="3d"))
    tight = G.original_state("tightTransf_2d")
    with pytest.raises(on.OriginalCheckpointError, match="has 2 layers.*cross_num_hidden_layers=2"):
        on.from_original(tight, sim_header="tightTransf", **dict(kw, cross_layers=1))
    with pytest.raises(on.OriginalCheckpointError, match="lower data.max_frames"):
        on.from_original(tight, sim_header="tightTransf", **dict(kw, max_frames=40))


def test_original_checkpoint_through_init_model_and_refusals(tmp_path):
    """load_model_weights (train.init_model, evaluate --checkpoint) takes the original's file;
    a config that does not fit and the original's optimizer state are refused clearly."""
    from clip4clip_dali.model import CLIP4Clip

    path = G.write_original_checkpoint(tmp_path, "seqTransf_2d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = G.build_model(tmp_path, "seqTransf_2d")
        ckpt.load_model_weights(model, path)
        extra = G.case("seqTransf_2d")["state_extra"]
        assert torch.equal(model.head.transformerClip.resblocks[1].mlp.c_fc.weight,
                           extra["transformerClip.resblocks.1.mlp.c_fc.weight"])
        assert torch.equal(model.head.frame_position_embeddings.weight,
                           extra["frame_position_embeddings.weight"][:6])
        cfg = G.model_config(tmp_path, "seqTransf_2d")
        cfg.sim_header = "meanP"
        meanp = CLIP4Clip.from_config(cfg, max_words=32, max_frames=6)
    with pytest.raises(on.OriginalCheckpointError, match="model.sim_header=seqTransf"):
        ckpt.load_model_weights(meanp, path)
    opt = tmp_path / "pytorch_opt.bin.0"
    torch.save({"epoch": 0, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "loss": 1.0}, opt)
    for call in (lambda: ckpt.load_for_resume(opt), lambda: ckpt.load_model_weights(model, opt)):
        with pytest.raises(ckpt.CheckpointError, match="optimizer state written by the original"):
            call()
    with pytest.raises(ckpt.CheckpointError, match="weights only.*train.init_model"):
        ckpt.load_for_resume(path)


def test_export_cli_and_original_recall_on_the_tiny_set(tmp_path):
    """Original-format weights -> ours (the loader) -> export-original (the CLI) -> ours again
    gives the golden similarities; and evaluation here gives the recall the original's own
    similarity matrix gives."""
    from clip4clip_dali.config import Config
    from clip4clip_dali.distributed import DistInfo
    from clip4clip_dali.evaluate import evaluate_split
    from clip4clip_dali.metrics import retrieval_metrics

    name = "tightTransf_2d"
    golden = G.case(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = G.build_model(tmp_path, name)
    ckpt.load_model_weights(model, G.write_original_checkpoint(tmp_path, name))
    ours = tmp_path / "best.pt"
    ckpt.save_weights(ours, model, {"model": {"name": "golden-tiny",
                                              "open_clip_config": G.TINY_CLIP}})
    out = tmp_path / "pytorch_model.bin.1"
    r = subprocess.run([sys.executable, "-m", "clip4clip_dali.checkpoint", "export-original",
                        str(ours), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exported = torch.load(out, weights_only=True)
    assert exported["clip.positional_embedding"].shape == (32, 128)  # the tiny CLIP's context
    assert exported["cross.embeddings.position_embeddings.weight"].shape == (32, 128)
    for k, v in G.original_state(name).items():  # the values (rows the original reads), dtypes
        e = exported[k]
        if k == "cross.embeddings.position_embeddings.weight":
            e, v = e[:7], v[:7]
        assert e.dtype == v.dtype and torch.equal(e, v), k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = G.build_model(tmp_path, name)
    ckpt.load_model_weights(again, out)
    again.eval()
    b = G.batch(with_index=True)
    with torch.no_grad():
        sim = again.similarity(again.encode_text(b["text"]),
                               again.encode_video(b["video"], b["video_mask"]), b["video_mask"])
    assert (sim - golden["sim"]).abs().max() <= 1e-5 * golden["sim"].abs().max()

    # evaluation of the original-format checkpoint, on the golden batch, per head
    for case_name in ("meanP_2d", "seqLSTM_2d", "tightTransf_2d"):
        g = G.case(case_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = G.build_model(tmp_path, case_name)
        ckpt.load_model_weights(m, G.write_original_checkpoint(tmp_path, case_name))
        cfg = Config()
        cfg.train.precision, cfg.data.max_words, cfg.data.max_frames = "fp32", 32, 6
        captions = [f"caption {i}" for i in range(4)]
        ids = dict(zip(captions, b["text"]))
        split = SimpleNamespace(name="golden", num_videos=4, caption_video=[0, 1, 2, 3],
                                captions=captions)

        def tokenizer(caps):
            t = torch.stack([ids[c] for c in caps])
            return t, (t > 0).long()

        res = evaluate_split(m, cfg, split, DistInfo(), loader=[b], tokenizer=tokenizer)
        assert res["plain"] == retrieval_metrics(g["sim"], [0, 1, 2, 3]), case_name


def test_original_checkpoint_through_the_clis(tmp_path):
    """Our weights exported to the original's format evaluate with the evaluate CLI to the
    same metrics as ours, and start a run through train.init_model (the demo model, with the
    seqTransf head so names and position rows are mapped)."""
    import json

    from clip4clip_dali.config import load_config
    from clip4clip_dali.data.synthetic import generate_dataset
    from clip4clip_dali.model import CLIP4Clip
    from test_train import check, tiny_args, train_here

    data = tmp_path / "data"
    generate_dataset(data, 12, codec="vp9", seed=2, min_seconds=2.0, max_seconds=3.0)
    out = tmp_path / "run"
    args = tiny_args(data, out, "model.sim_header=seqTransf", "model.cross_num_hidden_layers=2")
    cfg = load_config(args[1], [a for a in args[2:] if a != "--set"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CLIP4Clip.from_config(cfg.model, cfg.data.max_words, cfg.data.max_frames)
    ours = ckpt.save_weights(tmp_path / "best.pt", model, cfg.to_dict())
    orig32, orig = tmp_path / "pytorch_model.bin.32", tmp_path / "pytorch_model.bin.0"
    for path, dtype in ((orig32, "float32"), (orig, "original")):
        ckpt.main(["export-original", str(ours), str(path), "--dtype", dtype])
    exported = torch.load(orig, weights_only=True)
    assert exported["clip.visual.conv1.weight"].dtype == torch.float16
    assert exported["frame_position_embeddings.weight"].shape[0] == 16  # the demo's context
    results = []
    from clip4clip_dali.evaluate import main as evaluate

    for ck in (ours, orig32):  # the CLI's main in-process: two interpreter start-ups saved
        assert evaluate(args + ["--checkpoint", str(ck), "--split", "test"]) == 0
        results.append(json.loads((tmp_path / "eval_test.json").read_text())["plain"])
    assert results[0] == results[1]
    check(train_here(tiny_args(data, tmp_path / "run2", "train.max_steps=1",
                               "model.sim_header=seqTransf", "model.cross_num_hidden_layers=2",
                               f"train.init_model={orig}")))
