"""A synthetic MSVD-format dataset: drawn clips whose captions describe what is in them.

    python -m clip4clip_dali.data.synthetic --out DIR --videos N [--codec vp9|mjpeg|h264] [--seed S]

Layout written (the one CLIP4Clip's MSVD loader reads):
    DIR/videos/<id>.webm|.avi|.mp4     real encoded clips (VP9/WebM, MJPEG/AVI, H.264/MP4)
    DIR/train_list.txt val_list.txt test_list.txt   ~60/15/25 %, at least one video each
    DIR/raw-captions.pkl               {video_id: [caption tokens, ...]}, each caption a list of str
    DIR/synthetic.json                 per-video attributes, fps, frame count, size (for tests)

Each clip shows one or two coloured shapes moving across a plain background in a straight line
from one side to the other, so colour, shape and direction are visible in any two frames. The
3-5 captions per clip name exactly those attributes in varied wording; the (colour, shape,
direction) of the first object is unique across clips while the combinations last (6 x 5 x 4 =
120). Frame sizes (landscape and portrait, even), frame rates (including 30000/1001 and MSVD's
359/12) and lengths vary. Everything is drawn with numpy from a seeded generator and encoded with
one encoder thread and bit-exact muxing, so a seed gives the same bytes again.
Encoding is set for cheap decoding: short GOP (``GOP``), no B-frames/alt-ref, yuv420p (yuvj420p
for MJPEG). DALI's CPU decoder reads the VP9 and MJPEG clips; H.264 needs NVDEC or PyAV.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import av
import numpy as np

from ..errors import UserError, run_cli

CODECS = {  # name -> (encoder, extension, pixel format, options)
    "vp9": ("libvpx-vp9", ".webm", "yuv420p",
            {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
             "auto-alt-ref": "0", "crf": "36", "b": "0", "threads": "1"}),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p", {"q:v": "8", "threads": "1"}),
    "h264": ("libx264", ".mp4", "yuv420p",
             {"preset": "ultrafast", "bf": "0", "crf": "30", "threads": "1"}),
}
GOP = 12

COLOURS = {  # name -> RGB; all far from the backgrounds and from each other
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 70, 230),
    "yellow": (245, 225, 20), "purple": (150, 40, 190), "orange": (250, 140, 10),
}
BACKGROUNDS = {"black": (12, 12, 12), "gray": (128, 128, 128), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
DIRECTIONS = ("left", "right", "up", "down")
FRAME_RATES = (Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(24), Fraction(15),
               Fraction(24000, 1001), Fraction(12), Fraction(359, 12), Fraction(20))
SIZES = ((96, 72), (112, 84), (128, 72), (80, 64), (64, 112), (72, 96), (64, 96), (96, 96))

SHAPE_WORDS = {
    "circle": ["circle", "ball", "disc", "round dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "triangle shape"],
    "diamond": ["diamond", "rhombus"],
    "cross": ["cross", "plus sign"],
}
DIR_WORDS = {
    "left": ["left", "to the left", "leftward", "towards the left"],
    "right": ["right", "to the right", "rightward", "towards the right"],
    "up": ["up", "upward", "to the top", "towards the top"],
    "down": ["down", "downward", "to the bottom", "towards the bottom"],
}
VERBS = ["moves", "goes", "slides", "travels", "drifts", "is moving", "is going", "glides"]


@dataclass
class ObjectSpec:
    colour: str
    shape: str
    direction: str
    radius: int  # half size in pixels
    lane: float  # position across the motion axis, 0..1


@dataclass
class ClipSpec:
    video_id: str
    width: int
    height: int
    fps_num: int
    fps_den: int
    frames: int
    background: str
    objects: list

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)


# ----------------------------------------------------------------------------- drawing

def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float):
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.58)
    if shape == "cross":
        w = r * 0.35
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    raise ValueError(shape)


def _position(obj: ObjectSpec, t: float, width: int, height: int) -> tuple[float, float]:
    """Centre at progress t in [0, 1]: enters near one edge, leaves near the other."""
    r = obj.radius
    if obj.direction in ("left", "right"):
        a, b = r, width - 1 - r
        x = a + (b - a) * (t if obj.direction == "right" else 1 - t)
        y = r + (height - 1 - 2 * r) * obj.lane
    else:
        a, b = r, height - 1 - r
        y = a + (b - a) * (t if obj.direction == "down" else 1 - t)
        x = r + (width - 1 - 2 * r) * obj.lane
    return x, y


def render_frames(spec: ClipSpec) -> Iterable[np.ndarray]:
    """Yield the clip's frames, (H, W, 3) uint8 RGB."""
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.empty((h, w, 3), np.uint8)
    bg[:] = BACKGROUNDS[spec.background]
    n = spec.frames
    for i in range(n):
        t = i / max(1, n - 1)
        img = bg.copy()
        for obj in spec.objects:
            cx, cy = _position(obj, t, w, h)
            img[_shape_mask(obj.shape, xx, yy, cx, cy, obj.radius)] = COLOURS[obj.colour]
        yield img


def write_video(path, frames: Iterable[np.ndarray], fps, codec: str = "vp9",
                gop: int = GOP) -> int:
    """Encode RGB uint8 frames to ``path`` with PyAV; returns the number of frames written."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    encoder, _, pix_fmt, options = CODECS[codec]
    fps = Fraction(fps).limit_denominator(100000)
    n = 0
    with av.open(os.fspath(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = None
        for img in frames:
            if stream is None:
                h, w = img.shape[:2]
                stream = container.add_stream(encoder, rate=fps, options=dict(options))
                stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
                stream.codec_context.gop_size = gop
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = n
            frame.time_base = 1 / fps
            for pkt in stream.encode(frame):
                container.mux(pkt)
            n += 1
        if stream is not None:
            for pkt in stream.encode():
                container.mux(pkt)
    return n


# ----------------------------------------------------------------------------- captions

def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _object_phrase(rng, obj: ObjectSpec, article: bool = True, relative: bool = True) -> str:
    shape = SHAPE_WORDS[obj.shape][rng.integers(len(SHAPE_WORDS[obj.shape]))]
    if article and relative and rng.integers(3) == 2:
        return f"a {shape} that is {obj.colour}"
    phrase = f"{obj.colour} {shape}"
    return _a(phrase) if article else phrase


def _motion(rng, obj: ObjectSpec) -> str:
    verb = VERBS[rng.integers(len(VERBS))]
    d = DIR_WORDS[obj.direction][rng.integers(len(DIR_WORDS[obj.direction]))]
    return f"{verb} {d}"


def make_captions(rng: np.random.Generator, spec: ClipSpec, count: int) -> list[list[str]]:
    """``count`` distinct captions, each a list of lower-case tokens."""
    out: list[str] = []
    objs = spec.objects
    for _ in range(count * 20):
        if len(out) == count:
            break
        form = rng.integers(6)
        first = objs[0]
        if form == 0:
            text = f"{_object_phrase(rng, first)} {_motion(rng, first)}"
        elif form == 1:
            text = f"the {_object_phrase(rng, first, article=False)} {_motion(rng, first)}"
        elif form == 2:
            d = DIR_WORDS[first.direction][rng.integers(len(DIR_WORDS[first.direction]))]
            text = f"{_object_phrase(rng, first, article=False)} going {d}"
        elif form == 3:
            text = f"there is {_object_phrase(rng, first, relative=False)} that {_motion(rng, first)}"
        elif form == 4:
            text = (f"{_object_phrase(rng, first)} {_motion(rng, first)} "
                    f"on a {spec.background} background")
        else:
            text = f"someone shows {_object_phrase(rng, first)} which {_motion(rng, first)}"
        if len(objs) > 1:
            second = objs[1]
            joiner = ["and", "while", "as"][rng.integers(3)]
            text += f" {joiner} {_object_phrase(rng, second)} {_motion(rng, second)}"
        if text not in out:
            out.append(text)
    return [t.split() for t in out]


# ----------------------------------------------------------------------------- dataset

def _plan(rng: np.random.Generator, videos: int, min_seconds: float, max_seconds: float):
    combos = [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    order: list = []
    specs = []
    for i in range(videos):
        if not order:
            order = [combos[j] for j in rng.permutation(len(combos))]
        colour, shape, direction = order.pop()
        w, h = SIZES[rng.integers(len(SIZES))]
        fps = FRAME_RATES[rng.integers(len(FRAME_RATES))]
        seconds = float(rng.uniform(min_seconds, max_seconds))
        frames = max(2, int(round(seconds * fps)))
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        r = int(min(w, h) * rng.uniform(0.14, 0.2))
        objects = [ObjectSpec(colour, shape, direction, r, float(rng.uniform(0.15, 0.85)))]
        if rng.random() < 0.25:  # a second object, different colour and motion axis
            c2 = [c for c in COLOURS if c != colour][rng.integers(len(COLOURS) - 1)]
            s2 = SHAPES[rng.integers(len(SHAPES))]
            axis2 = ("up", "down") if direction in ("left", "right") else ("left", "right")
            d2 = axis2[rng.integers(2)]
            lane2 = 0.1 if objects[0].lane > 0.5 else 0.9
            objects.append(ObjectSpec(c2, s2, d2, max(4, int(r * 0.8)), lane2))
        vid = f"syn{i:04d}_0_{int(np.ceil(frames / fps))}"
        specs.append(ClipSpec(vid, int(w), int(h), fps.numerator, fps.denominator, frames,
                              background, objects))
    return specs


def _splits(rng: np.random.Generator, ids: list[str]) -> dict[str, list[str]]:
    n = len(ids)
    n_val = max(1, int(round(0.15 * n)))
    n_test = max(1, int(round(0.25 * n)))
    n_train = n - n_val - n_test
    perm = [ids[j] for j in rng.permutation(n)]
    order = {v: k for k, v in enumerate(ids)}
    parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
             "test": perm[n_train + n_val:]}
    return {k: sorted(v, key=order.get) for k, v in parts.items()}


def generate_dataset(out_dir, videos: int, codec: str = "vp9", seed: int = 0,
                     min_seconds: float = 2.0, max_seconds: float = 20.0,
                     overwrite: bool = False) -> dict:
    """Write a synthetic MSVD-format dataset to ``out_dir``; returns statistics.

    The dataset is built in a temporary sibling folder and renamed into place, so a reader (or
    another process generating the same set) never sees a half-written one.
    """
    t0 = time.perf_counter()
    if codec not in CODECS:
        raise UserError(f"synthetic codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if videos < 3:
        raise UserError(f"synthetic dataset needs at least 3 videos (one per split), got {videos}")
    if not 0 < min_seconds <= max_seconds:
        raise UserError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} exists and is not empty; choose another --out or pass "
                        f"--overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = _plan(rng, videos, min_seconds, max_seconds)
    cap_rng = np.random.default_rng([seed, 1])
    captions = {s.video_id: make_captions(cap_rng, s, int(cap_rng.integers(3, 6))) for s in specs}
    splits = _splits(np.random.default_rng([seed, 2]), [s.video_id for s in specs])

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "videos").mkdir()
        ext = CODECS[codec][1]
        total_bytes = total_frames = 0
        meta = {}
        for s in specs:
            path = tmp / "videos" / f"{s.video_id}{ext}"
            written = write_video(path, render_frames(s), s.fps, codec)
            assert written == s.frames, (written, s.frames)
            size = path.stat().st_size
            total_bytes += size
            total_frames += written
            d = asdict(s)
            d.update(fps=float(s.fps), file=f"videos/{path.name}", bytes=size,
                     captions=[" ".join(c) for c in captions[s.video_id]])
            meta[s.video_id] = d
        for name, ids in splits.items():
            (tmp / f"{name}_list.txt").write_text("\n".join(ids))
        with open(tmp / "raw-captions.pkl", "wb") as f:
            pickle.dump(captions, f, protocol=4)
        stats = {
            "out_dir": str(out_dir), "codec": codec, "seed": seed, "videos": len(specs),
            "splits": {k: len(v) for k, v in splits.items()},
            "captions": sum(len(c) for c in captions.values()),
            "frames": total_frames,
            "video_seconds": round(float(sum(s.frames / s.fps for s in specs)), 3),
            "bytes": total_bytes,
        }
        (tmp / "synthetic.json").write_text(json.dumps(
            {"stats": {k: v for k, v in stats.items() if k != "out_dir"},
             "splits": splits, "videos": meta}, indent=1, sort_keys=True))
        if out_dir.exists():
            if overwrite and any(out_dir.iterdir()):
                shutil.rmtree(out_dir)
            else:
                out_dir.rmdir()
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if (out_dir / "raw-captions.pkl").exists():  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clip4clip_dali.data.synthetic",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="dataset folder to create")
    ap.add_argument("--videos", type=int, required=True, help="number of clips (>= 3)")
    ap.add_argument("--codec", choices=sorted(CODECS), default="vp9")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = ap.parse_args(argv)
    stats = generate_dataset(args.out, args.videos, codec=args.codec, seed=args.seed,
                             min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                             overwrite=args.overwrite)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    run_cli(main)
