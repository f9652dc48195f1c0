"""Synthetic MSVD-format dataset: layout, captions, determinism, frame counts, decodability."""
from __future__ import annotations

import json
import pickle
import pickletools
from pathlib import Path

import av
import numpy as np
import pytest

from clip4clip_dali.data import synthetic
from clip4clip_dali.data.manifest import probe_video
from clip4clip_dali.data.synthetic import COLOURS, DIR_WORDS, SHAPE_WORDS, generate_dataset
from clip4clip_dali.errors import UserError

FAST = dict(min_seconds=1.0, max_seconds=2.5)


@pytest.fixture(scope="module")
def vp9_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "vp9"
    stats = generate_dataset(out, videos=8, codec="vp9", seed=3, **FAST)
    return out, stats


def _meta(out: Path) -> dict:
    return json.loads((out / "synthetic.json").read_text())


def test_layout_and_splits(vp9_set):
    out, stats = vp9_set
    ids = sorted(p.stem for p in (out / "videos").iterdir())
    assert len(ids) == 8 and all((out / "videos" / f"{i}.webm").exists() for i in ids)
    splits = {n: (out / f"{n}_list.txt").read_text().split() for n in ("train", "val", "test")}
    assert all(len(v) >= 1 for v in splits.values())
    assert sorted(sum(splits.values(), [])) == ids  # disjoint and complete
    assert stats["splits"] == {k: len(v) for k, v in splits.items()}
    assert len(splits["train"]) > len(splits["test"]) >= len(splits["val"])
    assert stats["videos"] == 8 and stats["bytes"] == sum(
        p.stat().st_size for p in (out / "videos").iterdir())


def test_minimum_split_sizes(tmp_path):
    generate_dataset(tmp_path / "d", videos=3, seed=0, min_seconds=0.2, max_seconds=0.3)
    for name in ("train", "val", "test"):
        assert len((tmp_path / "d" / f"{name}_list.txt").read_text().split()) == 1
    with pytest.raises(UserError):
        generate_dataset(tmp_path / "e", videos=2)


def test_captions_format_and_content(vp9_set):
    out, stats = vp9_set
    raw = (out / "raw-captions.pkl").read_bytes()
    # plain builtins only: loadable by a restricted unpickler (no GLOBAL / STACK_GLOBAL)
    assert not {op.name for op, _, _ in pickletools.genops(raw)} & {"GLOBAL", "STACK_GLOBAL"}
    caps = pickle.loads(raw)
    meta = _meta(out)["videos"]
    assert set(caps) == set(meta)
    assert stats["captions"] == sum(len(c) for c in caps.values())
    for vid, captions in caps.items():
        assert 3 <= len(captions) <= 5
        assert len({tuple(c) for c in captions}) == len(captions)
        obj = meta[vid]["objects"][0]
        for cap in captions:
            assert isinstance(cap, list) and cap and all(isinstance(t, str) and t for t in cap)
            assert all(t == t.lower() and " " not in t for t in cap)
            text = " ".join(cap)
            assert obj["colour"] in cap
            assert any(w in text for w in SHAPE_WORDS[obj["shape"]])
            assert any(w in text for w in DIR_WORDS[obj["direction"]])


def test_first_object_combinations_distinct(tmp_path):
    specs = synthetic._plan(np.random.default_rng(0), 40, 1.0, 2.0)
    combos = [(s.objects[0].colour, s.objects[0].shape, s.objects[0].direction) for s in specs]
    assert len(set(combos)) == 40


def test_deterministic(tmp_path, vp9_set):
    out, _ = vp9_set
    again = tmp_path / "again"
    generate_dataset(again, videos=8, codec="vp9", seed=3, **FAST)
    for p in sorted(out.rglob("*")):
        if p.is_file():
            assert (again / p.relative_to(out)).read_bytes() == p.read_bytes(), p.name
    other = tmp_path / "other"
    generate_dataset(other, videos=8, codec="vp9", seed=4, **FAST)
    assert (other / "raw-captions.pkl").read_bytes() != (out / "raw-captions.pkl").read_bytes()


def test_frames_and_fps_as_requested(vp9_set):
    out, _ = vp9_set
    meta = _meta(out)["videos"]
    sizes = set()
    for vid, m in meta.items():
        path = out / m["file"]
        info = probe_video(path)
        assert info.ok, info.error
        assert info.frames == m["frames"] == probe_video(path, count="decode").frames
        assert info.fps == pytest.approx(m["fps_num"] / m["fps_den"], rel=1e-9)
        assert (info.width, info.height) == (m["width"], m["height"])
        assert info.width % 2 == 0 and info.height % 2 == 0
        assert info.codec == "vp9"
        sizes.add(info.width > info.height)
    assert sizes == {True, False} or len(meta) < 8  # landscape and portrait


def test_drawn_content_matches_attributes(vp9_set):
    """The first object's colour is in the frame and it moves in the captioned direction."""
    out, _ = vp9_set
    for vid, m in _meta(out)["videos"].items():
        if len(m["objects"]) != 1:
            continue
        obj = m["objects"][0]
        with av.open(str(out / m["file"])) as c:
            frames = [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(video=0)]
        rgb = np.array(COLOURS[obj["colour"]], np.int16)

        def centroid(img):
            ys, xs = np.nonzero(np.abs(img - rgb).max(-1) < 60)
            assert len(xs) > 10, f"{vid}: {obj['colour']} object not visible"
            return xs.mean(), ys.mean()

        (x0, y0), (x1, y1) = centroid(frames[0]), centroid(frames[-1])
        dx, dy = x1 - x0, y1 - y0
        expect = {"left": -dx, "right": dx, "up": -dy, "down": dy}[obj["direction"]]
        assert expect > 0.3 * min(m["width"], m["height"]), (vid, obj, dx, dy)


@pytest.mark.parametrize("codec,ext", [("mjpeg", ".avi"), ("h264", ".mp4")])
def test_other_codecs(tmp_path, codec, ext):
    out = tmp_path / codec
    generate_dataset(out, videos=3, codec=codec, seed=1, **FAST)
    meta = _meta(out)["videos"]
    for vid, m in meta.items():
        assert m["file"].endswith(ext)
        info = probe_video(out / m["file"])
        assert info.ok and info.frames == m["frames"], info
        assert info.codec == codec


def test_existing_dir_refused_and_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic.main(["--out", str(out), "--videos", "3", "--min-seconds", "0.5",
                           "--max-seconds", "1", "--seed", "2"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["videos"] == 3 and stats["frames"] > 0 and stats["bytes"] > 0
    with pytest.raises(UserError, match="not empty"):
        generate_dataset(out, videos=3)
    generate_dataset(out, videos=4, overwrite=True, min_seconds=0.5, max_seconds=1)
    assert len(list((out / "videos").iterdir())) == 4
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _dali_decode(path: Path, indices, pad_mode: str = "none"):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, batch=False)
        idx = fn.external_source(name="idx", dtype=types.INT32, batch=False)
        return fn.decoders.video(enc, device="cpu", frames=idx, pad_mode=pad_mode)

    p = pipe()
    p.build()
    p.feed_input("enc", [np.fromfile(path, np.uint8)])
    p.feed_input("idx", [np.asarray(indices, np.int32)])
    (out,) = p.run()
    return np.array(out[0])


@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_decodes_every_frame(tmp_path, codec):
    out = tmp_path / codec
    generate_dataset(out, videos=3, codec=codec, seed=5, min_seconds=0.5, max_seconds=1.5)
    for vid, m in _meta(out)["videos"].items():
        path = out / m["file"]
        n = probe_video(path).frames
        assert n == m["frames"]
        frames = _dali_decode(path, np.arange(n))
        assert frames.shape == (n, m["height"], m["width"], 3)
        with av.open(str(path)) as c:
            ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        assert np.abs(frames.astype(np.int16) - ref).mean() < 3.0
        # one past the end fails with pad_mode="none"; DALI's default pad_mode ("constant")
        # silently returns a black frame instead, so the manifest's count must be exact
        with pytest.raises(RuntimeError):
            _dali_decode(path, [n])
        assert _dali_decode(path, [n], pad_mode="constant").max() == 0


def test_held_out_splits_are_honest_and_distinct():
    """No val/test caption is also a train caption; within val and within test the first
    objects' (colour, shape, direction) differ, so each caption describes one video there.
    150 videos: more than the 120 combinations, so train repeats those of val and test."""
    specs = synthetic._plan(np.random.default_rng(7), 150, 1.0, 2.0)
    split = synthetic._splits(np.random.default_rng(8), specs)
    caps = synthetic._captions(np.random.default_rng(9), specs, split)
    first = {s.video_id: s.objects[0] for s in specs}
    train_texts = {" ".join(c) for v in split["train"] for c in caps[v]}
    for name in ("val", "test"):
        assert not train_texts & {" ".join(c) for v in split[name] for c in caps[v]}
        combos = [(first[v].colour, first[v].shape, first[v].direction) for v in split[name]]
        assert len(set(combos)) == len(combos) == {"val": 22, "test": 38}[name]
    assert sorted(sum(split.values(), [])) == sorted(first)


def test_one_frame_shows_the_direction_and_the_centre_crop_holds_the_object():
    """The trail lies behind the object (a frame average, meanP, sees the direction) and every
    object pixel is inside the frame's central square (what the centre crop keeps)."""
    specs = synthetic._plan(np.random.default_rng(5), 12, 1.0, 1.5)
    for spec in specs:  # 1-3 alike objects moving together
        obj = spec.objects[0]
        frames = list(synthetic.render_frames(spec))
        img = frames[len(frames) * 2 // 3].astype(np.int16)
        bg = np.array(synthetic.BACKGROUNDS[spec.background], np.int16)
        rgb = np.array(COLOURS[obj.colour], np.int16)
        solid = np.abs(img - rgb).max(-1) <= 1
        ghost = (np.abs(img - bg).max(-1) > 8) & ~solid
        assert solid.sum() > 10 and ghost.sum() > 10, spec.video_id
        ys, xs = np.nonzero(solid)
        gy, gx = np.nonzero(ghost)
        ahead = {"left": gx.mean() - xs.mean(), "right": xs.mean() - gx.mean(),
                 "up": gy.mean() - ys.mean(), "down": ys.mean() - gy.mean()}[obj.direction]
        assert ahead > 1, (spec.video_id, obj)
        side = min(spec.width, spec.height)
        x0, y0 = (spec.width - side) // 2, (spec.height - side) // 2
        for f in frames:
            ys, xs = np.nonzero(np.abs(f.astype(np.int16) - bg).max(-1) > 8)
            assert xs.min() >= x0 and xs.max() < x0 + side, spec.video_id
            assert ys.min() >= y0 and ys.max() < y0 + side, spec.video_id
    assert {len(s.objects) for s in specs} == {1, 2, 3}
