"""A synthetic MSVD-format dataset: drawn clips whose captions describe what is in them.

    python -m clip4clip_dali.data.synthetic --out DIR --videos N [--codec vp9|mjpeg|h264] [--seed S]

Layout written (the one CLIP4Clip's MSVD loader reads):
    DIR/videos/<id>.webm|.avi|.mp4     real encoded clips (VP9/WebM, MJPEG/AVI, H.264/MP4)
    DIR/train_list.txt val_list.txt test_list.txt   ~60/15/25 %, at least one video each
    DIR/raw-captions.pkl               {video_id: [caption tokens, ...]}, each caption a list of str
    DIR/synthetic.json                 per-video attributes, fps, frame count, size (for tests)

Each clip shows one to three alike shapes (one colour, one shape) moving side by side across a
plain background in a straight line, inside the frame's central square (what CLIP's centre crop
keeps), each leaving a fading trail so that one frame shows the direction. The 3-5 captions per
clip name the number, colour, shape, direction and background in varied wording. The (colour,
shape, direction) of the objects is unique across clips while the combinations last (6 x 5 x 4 =
120); val and test each take clips whose combinations differ (at most 60 and 120 clips), and no
val or test caption is also a train caption. Frame sizes (landscape and portrait, even), frame
rates (including 30000/1001 and MSVD's 359/12) and lengths vary. Everything is drawn with numpy
from a seeded generator and each clip encoded with one encoder thread and bit-exact muxing, so a
seed gives the same bytes again.
Encoding is set for cheap decoding: short GOP (``GOP``), no B-frames/alt-ref, yuv420p (yuvj420p
for MJPEG). DALI's CPU decoder reads the VP9 and MJPEG clips; H.264 needs NVDEC or PyAV.
"""
from __future__ import annotations

import argparse
import functools
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

# One word a shape and two phrasings a direction: a model trained from scratch for a few
# minutes grounds a word it sees often; the wording varies in the verbs and sentence forms.
SHAPE_WORDS = {"circle": ["circle"], "square": ["square"], "triangle": ["triangle"],
               "diamond": ["diamond"], "cross": ["cross"]}
DIR_WORDS = {
    "left": ["left", "to the left"],
    "right": ["right", "to the right"],
    "up": ["up", "upward"],
    "down": ["down", "downward"],
}
VERBS = [("moves", "move"), ("goes", "go"), ("slides", "slide"), ("travels", "travel"),
         ("drifts", "drift"), ("is moving", "are moving"), ("is going", "are going"),
         ("glides", "glide")]  # (one object, several)
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles",
          "diamond": "diamonds", "cross": "crosses"}
COUNT_WORDS = {2: "two", 3: "three"}


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
    """Centre at progress t in [0, 1]: enters near one edge of the frame's central square (what
    CLIP's centre crop keeps), leaves near the other."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    r = obj.radius
    a, b = r, side - 1 - r
    along = a + (b - a) * (t if obj.direction in ("right", "down") else 1 - t)
    across = r + (side - 1 - 2 * r) * obj.lane
    if obj.direction in ("left", "right"):
        return x0 + along, y0 + across
    return x0 + across, y0 + along


TRAIL = tuple((0.05 * k, 0.7 - 0.1 * k) for k in range(6, 0, -1))  # (progress behind, opacity)


@functools.lru_cache(maxsize=256)
def _stencil(shape: str, r: int) -> np.ndarray:
    """The shape's mask on a (2r+3)^2 grid centred on its middle pixel."""
    k = r + 1
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1].astype(np.float32)
    return _shape_mask(shape, xx, yy, 0.0, 0.0, r)


def _stamp(img: np.ndarray, obj: ObjectSpec, cx: float, cy: float, colour: np.ndarray,
           alpha: float = 1.0) -> None:
    """Blend the object's shape centred at the pixel nearest (cx, cy) into ``img``."""
    h, w = img.shape[:2]
    m = _stencil(obj.shape, obj.radius)
    k = obj.radius + 1
    x, y = int(round(cx)) - k, int(round(cy)) - k
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + m.shape[1]), min(h, y + m.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    m = m[y0 - y:y1 - y, x0 - x:x1 - x]
    box = img[y0:y1, x0:x1]
    box[m] = colour if alpha >= 1 else (1 - alpha) * box[m] + alpha * colour


def render_frames(spec: ClipSpec) -> Iterable[np.ndarray]:
    """Yield the clip's frames, (H, W, 3) uint8 RGB. Each object leaves a fading trail of
    ghosts behind it, like motion blur, so one frame shows which way it moves (a model that
    averages frames, meanP, cannot read the direction from their order)."""
    h, w = spec.height, spec.width
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = BACKGROUNDS[spec.background]
    n = spec.frames
    for i in range(n):
        t = i / max(1, n - 1)
        img = bg.copy()
        for obj in spec.objects:
            colour = np.asarray(COLOURS[obj.colour], np.float32)
            for behind, alpha in TRAIL:
                if t - behind > 0:
                    _stamp(img, obj, *_position(obj, t - behind, w, h), colour, alpha)
            _stamp(img, obj, *_position(obj, t, w, h), colour)
        yield img.round().astype(np.uint8)


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


def _objects_phrase(rng, objs: list) -> str:
    """``a red circle`` / ``a circle that is red`` / ``one red circle`` / ``three red circles``."""
    obj, n = objs[0], len(objs)
    if n > 1:
        return f"{COUNT_WORDS[n]} {obj.colour} {PLURAL[obj.shape]}"
    form = rng.integers(3)
    if form == 0:
        return f"a {obj.shape} that is {obj.colour}"
    return f"one {obj.colour} {obj.shape}" if form == 1 else _a(f"{obj.colour} {obj.shape}")


def _motion(rng, objs: list) -> str:
    verb = VERBS[rng.integers(len(VERBS))][len(objs) > 1]
    d = DIR_WORDS[objs[0].direction][rng.integers(len(DIR_WORDS[objs[0].direction]))]
    return f"{verb} {d}"


def make_captions(rng: np.random.Generator, spec: ClipSpec, count: int,
                  exclude: frozenset | set = frozenset()) -> list[list[str]]:
    """``count`` distinct captions, each a list of lower-case tokens, none of them in
    ``exclude`` (caption strings, e.g. the training split's, so held-out captions are new).
    Each names the objects' number, colour and shape, their direction and the background."""
    out: list[str] = []
    objs, bg = spec.objects, spec.background
    for _ in range(count * 40):
        if len(out) == count:
            break
        what, how = _objects_phrase(rng, objs), _motion(rng, objs)
        form = rng.integers(5)
        if form == 0:
            text = f"{what} {how} on a {bg} background"
        elif form == 1:
            text = f"on a {bg} background {what} {how}"
        elif form == 2:
            d = DIR_WORDS[objs[0].direction][rng.integers(2)]
            text = f"{what} going {d} over a {bg} background"
        elif form == 3:
            text = f"there {'are' if len(objs) > 1 else 'is'} {what} on {bg} that {how}"
        else:
            text = f"someone shows {what} which {how} against a {bg} background"
        if text not in out and text not in exclude:
            out.append(text)
    if not out:
        raise RuntimeError(f"no caption for {spec.video_id} outside the excluded set")
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
        count = 1 + int(rng.integers(3))  # 1-3 alike objects side by side, moving together
        r = max(3, int(min(w, h) * rng.uniform(0.11, 0.13)))  # alike sizes: area grows with count
        lanes = (np.arange(count) + 0.5) / count + rng.uniform(-0.25, 0.25) / count
        objects = [ObjectSpec(colour, shape, direction, r, float(np.clip(lane, 0.0, 1.0)))
                   for lane in lanes]
        vid = f"syn{i:04d}_0_{int(np.ceil(frames / fps))}"
        specs.append(ClipSpec(vid, int(w), int(h), fps.numerator, fps.denominator, frames,
                              background, objects))
    return specs


MAX_VAL = 60  # enough to pick the best epoch
MAX_TEST = len(COLOURS) * len(SHAPES) * len(DIRECTIONS)  # 120: one video a combination


def _combo(spec: ClipSpec) -> tuple:
    o = spec.objects[0]
    return o.colour, o.shape, o.direction


def _splits(rng: np.random.Generator, specs: list) -> dict[str, list[str]]:
    """~60/15/25 % of the videos, at random, with at most ``MAX_VAL`` val and ``MAX_TEST`` test
    videos (the rest trains). Val and test each take videos whose first object (colour, shape,
    direction) differs from the others' of the split while there are such videos, so a caption
    of a held-out video describes one video of its split."""
    ids = [s.video_id for s in specs]
    n = len(ids)
    n_val = max(1, min(MAX_VAL, int(round(0.15 * n))))
    n_test = max(1, min(MAX_TEST, int(round(0.25 * n))))
    size = {"test": n_test, "val": n_val}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    seen: dict[str, set] = {"test": set(), "val": set()}
    rest = []
    for j in rng.permutation(n):
        s = specs[j]
        for name in ("test", "val"):
            if len(parts[name]) < size[name] and _combo(s) not in seen[name]:
                parts[name].append(s.video_id)
                seen[name].add(_combo(s))
                break
        else:
            rest.append(s.video_id)
    for name in ("test", "val"):  # more held-out videos than combinations: repeats allowed
        while len(parts[name]) < size[name]:
            parts[name].append(rest.pop())
    parts["train"] = rest
    order = {v: k for k, v in enumerate(ids)}
    return {k: sorted(v, key=order.get) for k, v in parts.items()}


PARALLEL_FROM = 64  # clips; fewer are drawn on one thread


def _encode(job) -> int:
    path, spec, codec = job
    return write_video(path, render_frames(spec), spec.fps, codec)


def _encode_all(jobs: list) -> list[int]:
    """Draw and encode every clip, on two threads for a large set (PyAV encodes without the
    GIL; threads, unlike a process pool, work from any script). Each clip is encoded alone and
    bit-exact, so the bytes do not depend on the thread."""
    workers = min(len(os.sched_getaffinity(0)), 2) if len(jobs) >= PARALLEL_FROM else 1
    if workers < 2:
        return [_encode(j) for j in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_encode, jobs))


def _captions(rng: np.random.Generator, specs: list, splits: dict) -> dict:
    """3-5 captions per video; no val or test caption is also a train caption."""
    split_of = {v: name for name, ids in splits.items() for v in ids}
    captions, train_texts = {}, set()
    for s in sorted(specs, key=lambda s: split_of[s.video_id] != "train"):  # train first
        held_out = split_of[s.video_id] != "train"
        caps = make_captions(rng, s, int(rng.integers(3, 6)), train_texts if held_out else ())
        if not held_out:
            train_texts.update(" ".join(c) for c in caps)
        captions[s.video_id] = caps
    return {s.video_id: captions[s.video_id] for s in specs}


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
    splits = _splits(np.random.default_rng([seed, 2]), specs)
    captions = _captions(np.random.default_rng([seed, 1]), specs, splits)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "videos").mkdir()
        ext = CODECS[codec][1]
        total_bytes = total_frames = 0
        meta = {}
        jobs = [(tmp / "videos" / f"{s.video_id}{ext}", s, codec) for s in specs]
        for (path, s, _), written in zip(jobs, _encode_all(jobs)):
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
