"""Video manifest: probing, frame-count rule against real decoding, bad files, JSON cache."""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clip4clip_dali.data import manifest
from clip4clip_dali.data.manifest import VideoInfo, load_manifest, probe_video
from clip4clip_dali.data.synthetic import write_video

REAL = Path("/work/shared/realdata")
REAL_CLIPS = sorted((REAL / "mini_msvd" / "MSVD_Videos").glob("*.avi")) + sorted(
    p for p in (REAL / "clips").glob("*") if p.suffix in (".mp4", ".avi"))
needs_real = pytest.mark.skipif(not REAL_CLIPS, reason="real clips not available")


def _clip(path: Path, n: int, fps=25, codec="vp9", size=(48, 32)) -> Path:
    w, h = size
    frames = (np.full((h, w, 3), (i * 7) % 256, np.uint8) for i in range(n))
    assert write_video(path, frames, fps, codec) == n
    return path


@needs_real
@pytest.mark.parametrize("path", REAL_CLIPS, ids=lambda p: p.name)
def test_real_clips_frame_count_equals_decoded(path):
    """The demux count (default) equals what a decoder yields, on real MSVD AVIs and others."""
    info = probe_video(path)
    assert info.ok, info.error
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert info.frames == decoded
    assert probe_video(path, count="header").frames == decoded
    assert info.duration == pytest.approx(info.frames / info.fps)
    assert info.size == path.stat().st_size


@needs_real
def test_real_msvd_known_values():
    d = REAL / "mini_msvd" / "MSVD_Videos"
    info = probe_video(d / "0lh_UWF9ZP4_62_69.avi")
    assert (info.frames, info.codec) == (210, "h264")
    assert info.fps == pytest.approx(359 / 12)
    info = probe_video(d / "TZ860P4iTaM_15_28.avi")
    assert info.frames == 195 and info.fps == pytest.approx(15000 / 1001)


@pytest.mark.parametrize("codec", ["vp9", "mjpeg", "h264"])
@pytest.mark.parametrize("fps", [Fraction(30000, 1001), Fraction(15), Fraction(359, 12)])
def test_generated_clip_counts_and_rates(tmp_path, codec, fps):
    p = _clip(tmp_path / f"c.{ {'vp9': 'webm', 'mjpeg': 'avi', 'h264': 'mp4'}[codec]}", 23, fps,
              codec)
    info = probe_video(p)
    assert info.ok and info.frames == 23 == probe_video(p, count="decode").frames
    assert info.fps == pytest.approx(float(fps), rel=1e-9)
    assert (info.width, info.height) == (48, 32)


def _audio_only(path: Path, codec: str) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=8000)
        s.layout = "mono"
        fmt = "fltp" if codec == "aac" else "s16"
        dtype = np.float32 if codec == "aac" else np.int16
        for i in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype), format=fmt, layout="mono")
            f.sample_rate, f.pts = 8000, i * 1024
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@pytest.fixture
def bad_files(tmp_path):
    good = _clip(tmp_path / "good.webm", 40)
    good_avi = _clip(tmp_path / "good.avi", 40, codec="mjpeg")
    data, avi = good.read_bytes(), good_avi.read_bytes()
    files = {
        "zero": tmp_path / "zero.webm",
        "junk": tmp_path / "junk.webm",
        "truncated_webm": tmp_path / "trunc.webm",
        "truncated_avi": tmp_path / "trunc.avi",
        "text": tmp_path / "notes.mp4",
        "missing": tmp_path / "missing.avi",
        "m4a": _audio_only(tmp_path / "a.m4a", "aac"),
        "wav": _audio_only(tmp_path / "a.wav", "pcm_s16le"),
        "directory": tmp_path / "dir.webm",
    }
    files["zero"].write_bytes(b"")
    files["junk"].write_bytes(np.random.default_rng(0).bytes(4000))
    files["truncated_webm"].write_bytes(data[: len(data) // 2])
    files["truncated_avi"].write_bytes(avi[: len(avi) // 2])
    files["text"].write_text("not a video\n")
    files["directory"].mkdir()
    return files


def test_bad_files_never_raise(bad_files):
    reasons = {}
    for name, path in bad_files.items():
        info = probe_video(path)
        assert not info.ok and info.error, name
        assert info.frames == 0 or name.startswith("truncated")
        reasons[name] = info.error
    assert "empty" in reasons["zero"]
    assert "no video stream" in reasons["m4a"] and "audio" in reasons["m4a"]
    assert "no video stream" in reasons["wav"]
    assert "truncated" in reasons["truncated_webm"] and "truncated" in reasons["truncated_avi"]
    assert "cannot read" in reasons["missing"]
    assert "not a readable video" in reasons["junk"]


def test_ok_property():
    base = dict(path="x", frames=10, fps=25.0, width=8, height=8, codec="vp9", duration=0.4,
                size=1, mtime=0.0, error=None)
    assert VideoInfo(**base).ok
    assert not VideoInfo(**{**base, "error": "boom"}).ok
    assert not VideoInfo(**{**base, "frames": 0}).ok
    assert not VideoInfo(**{**base, "fps": 0.0}).ok


@pytest.fixture
def counting(monkeypatch):
    calls = []
    real = manifest.probe_video

    def probe(path, count="demux"):
        calls.append(Path(path).name)
        return real(path, count=count)

    monkeypatch.setattr(manifest, "probe_video", probe)
    return calls


def test_cache_reuse_and_refresh(tmp_path, counting):
    vids = {f"v{i}": _clip(tmp_path / f"v{i}.webm", 10 + i) for i in range(4)}
    vids["bad"] = tmp_path / "bad.webm"
    vids["bad"].write_bytes(b"garbage" * 10)
    cache = tmp_path / "cache" / "manifest.json"

    first = load_manifest(vids, cache, workers=2)
    assert list(first) == list(vids)  # order kept
    assert [first[f"v{i}"].frames for i in range(4)] == [10, 11, 12, 13]
    assert not first["bad"].ok
    assert sorted(counting) == sorted(p.name for p in vids.values())
    doc = json.loads(cache.read_text())
    assert doc["version"] == manifest.CACHE_VERSION and len(doc["videos"]) == 5
    assert not [p for p in cache.parent.iterdir() if p.name != cache.name]  # no tmp left

    counting.clear()
    mtime_before = cache.stat().st_mtime_ns
    second = load_manifest(vids, cache)
    # only the cached failure is probed again (it may have come from the environment)
    assert counting == ["bad.webm"] and second == first
    assert cache.stat().st_mtime_ns == mtime_before  # nothing changed: not rewritten

    # same size, new mtime -> probed again; new content (other size) -> new frame count
    st = vids["v1"].stat()
    os.utime(vids["v1"], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    _clip(vids["v2"], 30)
    counting.clear()
    third = load_manifest(vids, cache)
    assert sorted(counting) == ["bad.webm", "v1.webm", "v2.webm"]
    assert third["v2"].frames == 30 and third["v1"].frames == 11

    # a fixed bad file is picked up
    _clip(vids["bad"], 7)
    counting.clear()
    assert load_manifest(vids, cache)["bad"].frames == 7 and counting == ["bad.webm"]


def test_cache_shared_between_subsets_and_pruned(tmp_path, counting):
    vids = {f"v{i}": _clip(tmp_path / f"v{i}.webm", 5 + i) for i in range(3)}
    cache = tmp_path / "m.json"
    load_manifest({"v0": vids["v0"], "v1": vids["v1"]}, cache)
    load_manifest({"v2": vids["v2"]}, cache)
    assert len(json.loads(cache.read_text())["videos"]) == 3
    counting.clear()
    load_manifest(vids, cache)
    assert counting == []
    vids["v0"].unlink()
    load_manifest({"v1": vids["v1"]}, cache)
    keys = json.loads(cache.read_text())["videos"]
    assert len(keys) == 2 and not any(k.endswith("v0.webm") for k in keys)


def test_corrupt_or_foreign_cache_is_ignored(tmp_path, counting):
    vids = {"a": _clip(tmp_path / "a.webm", 6)}
    cache = tmp_path / "m.json"
    cache.write_text("{ not json")
    assert load_manifest(vids, cache)["a"].frames == 6
    assert json.loads(cache.read_text())["videos"]  # rewritten properly
    cache.write_text(json.dumps({"version": 999, "videos": {}}))
    counting.clear()
    load_manifest(vids, cache)
    assert counting == ["a.webm"]


def test_no_cache_and_unwritable_cache(tmp_path):
    vids = {"a": _clip(tmp_path / "a.webm", 6)}
    assert load_manifest(vids, None)["a"].frames == 6
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # cache dir cannot be created (a file is in the way): warns, still returns the result
    assert load_manifest(vids, blocker / "sub" / "m.json")["a"].frames == 6
