"""The clip sets a run measures, and the config and split built on them.

A source set is drawn (``--codecs``, ``--clip-size``, ``--clip-fps``; cached under
``--cache-dir``) or a user's (``--data-path``). ``--prepare`` says which shapes of it are
measured: ``raw`` (as is), ``3fps`` (``pipelines/prepare_msvd.py``: 3 fps, short side
``--resolution``) and ``presampled`` (``prepare_msvd.py --presample``: only the frames CLIP4Clip
samples, already ``--resolution`` square) and ``shards`` (``pipelines/make_shards.py``: the same
pre-sampled clips in tar shards, read with ``data.dataset=shards``). Prepared copies share the
source's captions and split lists (same ``data_path``), so every shape holds the same clips.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from .common import log, usable_cores

REPO = Path(__file__).resolve().parents[2]
PREPARE_SHAPES = ("raw", "3fps", "presampled", "shards")
PRESAMPLE_CODECS = ("vp9", "h264")  # what prepare_msvd.py --presample writes


def add_args(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-path", default=None, help="a user's MSVD-format data_path (raw or prepared)")
    g.add_argument("--features-path", default=None, help="its video folder (default: data-path)")
    g.add_argument("--label", default=None, help="the name of that set in the tables (default: user:<data-path name>)")
    g.add_argument("--split", default="train")
    g.add_argument("--max-videos", type=int, default=0, help="use only the first N videos (0: all)")
    g.add_argument("--cache-dir", default=os.environ.get(
        "CLIP4CLIP_BENCH_CACHE", str(Path(tempfile.gettempdir()) / "clip4clip-bench")))
    g.add_argument("--codecs", default="vp9,mjpeg", help="synthetic sets to generate: vp9,mjpeg,h264")
    g.add_argument("--videos", type=int, default=32, help="synthetic clips per set")
    g.add_argument("--clip-size", default="320x240", help="WxH of the drawn clips, or 'native' "
                   "(the package generator's own small sizes); comma separated: a set each")
    g.add_argument("--clip-fps", type=float, default=30000 / 1001)
    g.add_argument("--clip-seconds", type=float, nargs=2, default=(4.0, 12.0))
    g.add_argument("--gop", type=int, default=12, help="keyframe interval of the drawn clips")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prepare", default="raw",
                   help="shapes of each set to measure: raw (as is), 3fps and presampled (both "
                        "made from it by pipelines/prepare_msvd.py, cached) and shards "
                        "(pipelines/make_shards.py, cached), comma separated")
    g.add_argument("--shard-size", default="256MB", help="make_shards.py --shard-size")
    g.add_argument("--prepare-codec", default="auto",
                   help="codec of the prepared copies: vp9, h264 or auto (the source's when it "
                        "is vp9/h264, else vp9)")
    g.add_argument("--presample-crf", type=int, default=None,
                   help="quality of the pre-sampled copies (prepare_msvd.py --crf; default its own)")
    g.add_argument("--max-frames", type=int, default=12)
    g.add_argument("--resolution", type=int, default=224)
    g.add_argument("--workers", type=int, default=2, help="DataLoader workers = DALI threads")
    g.add_argument("--prefetch", type=int, default=2)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def bench_dataset(cache: Path, codec: str, videos: int, size: tuple[int, int], fps: Fraction,
                  seconds: tuple[float, float], seed: int, gop: int) -> Path:
    """An MSVD-format set of drawn clips (``clip4clip_dali.data.synthetic``'s shapes, captions
    and encoder settings) at one frame size and rate; every id in every split list. Cached."""
    from clip4clip_dali.data import synthetic as syn

    w, h = size
    name = (f"{codec}-{videos}v-{w}x{h}-{float(fps):g}fps-{seconds[0]:g}-{seconds[1]:g}s"
            f"-gop{gop}-seed{seed}")
    out = cache / name
    if (out / "raw-captions.pkl").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"generating {videos} {codec} clips {w}x{h} @ {float(fps):g} fps into {out}")
    rng = np.random.default_rng(seed)
    combos = [(c, s, d) for c in syn.COLOURS for s in syn.SHAPES for d in syn.DIRECTIONS]
    order = rng.permutation(len(combos))
    cap_rng = np.random.default_rng([seed, 1])
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out.parent))
    try:
        (tmp / "videos").mkdir()
        ext = syn.CODECS[codec][1]
        captions, ids, jobs = {}, [], []
        for i in range(videos):
            colour, shape, direction = combos[order[i % len(combos)]]
            frames = max(2, int(round(float(rng.uniform(*seconds)) * fps)))
            r = int(min(w, h) * rng.uniform(0.14, 0.2))
            bg = list(syn.BACKGROUNDS)[rng.integers(len(syn.BACKGROUNDS))]
            vid = f"bench{i:04d}"
            spec = syn.ClipSpec(vid, w, h, fps.numerator, fps.denominator, frames, bg,
                                [syn.ObjectSpec(colour, shape, direction, r, float(rng.uniform(0.2, 0.8)))])
            jobs.append((str(tmp / "videos" / f"{vid}{ext}"), spec, codec, gop))
            captions[vid] = syn.make_captions(cap_rng, spec, 4)
            ids.append(vid)
        workers = min(usable_cores(), 16, len(jobs))
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            from clip4clip_dali.workers import clean_context

            with ProcessPoolExecutor(workers, mp_context=clean_context(("av",))) as pool:
                list(pool.map(_write_clip, jobs, chunksize=4))
        else:
            for job in jobs:
                _write_clip(job)
        for split in ("train", "val", "test"):
            (tmp / f"{split}_list.txt").write_text("\n".join(ids) + "\n")
        with open(tmp / "raw-captions.pkl", "wb") as f:
            pickle.dump(captions, f, protocol=4)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_clip(job) -> None:
    from clip4clip_dali.data import synthetic as syn

    path, spec, codec, gop = job
    syn.write_video(path, syn.render_frames(spec), spec.fps, codec, gop=gop)


def native_synthetic_dataset(cache: Path, codec: str, videos: int, seed: int) -> Path:
    """The package's own synthetic set (its varied small frame sizes and rates)."""
    from clip4clip_dali.data.synthetic import generate_dataset

    out = cache / f"synthetic-{codec}-{videos}v-seed{seed}"
    if not (out / "raw-captions.pkl").exists():
        log(f"generating the synthetic set ({videos} {codec} clips) into {out}")
        generate_dataset(out, videos, codec=codec, seed=seed, overwrite=True)
    return out


def _prepare_module():
    pipelines = str(REPO / "pipelines")
    if pipelines not in sys.path:
        sys.path.insert(0, pipelines)
    import prepare_msvd

    return prepare_msvd


def prepared_copy(args, src_videos: Path, src_key: str, shape: str, codec: str) -> tuple[Path, str]:
    """``src_videos`` prepared by ``pipelines/prepare_msvd.py`` as ``shape`` (3fps|presampled)
    into the cache (reused once complete). Returns (the clips' folder, a note)."""
    from clip4clip_dali.data.presampled import Sampling

    pm = _prepare_module()
    sampling = Sampling.from_config(make_cfg(args, None, None).data)
    if shape == "presampled":
        crf = args.presample_crf
        opts = pm.Options(codec=codec, crf=crf, presample=sampling)
        tag = (f"presampled-{codec}-r{sampling.image_resolution}-m{sampling.max_frames}"
               f"-ff{sampling.feature_framerate}-sp{sampling.slice_framepos}"
               + ("" if crf is None else f"-crf{crf}"))
        how = (f"pre-sampled ({sampling.describe()}), {codec}, "
               + ("default CRF" if crf is None else f"CRF {crf}"))
    else:
        opts = pm.Options(short_side=args.resolution, fps=3.0, codec=codec)
        tag = f"3fps-{codec}-s{args.resolution}"
        how = f"3 fps, short side {args.resolution}, {codec}, keyframe each second"
    out = Path(args.cache_dir) / "prepared" / f"{src_key}--{tag}"
    done = out / ".bench-complete.json"
    if not done.exists():
        log(f"preparing {src_videos} as {how} into {out}")
        summary = pm.prepare(src_videos, out, opts, workers=min(usable_cores(), 16))
        if summary.get("failed"):
            raise RuntimeError(f"prepare_msvd.py failed on {summary['failed']} clip(s) of "
                               f"{src_videos}: {summary['failed_ids'][:5]}")
        done.write_text(json.dumps(summary, default=str))
    return out, f"prepared by pipelines/prepare_msvd.py: {how}"


def shard_copy(args, src: dict, codec: str) -> tuple[Path, str]:
    """The source set written by ``pipelines/make_shards.py`` into the cache (reused once
    complete). Returns (its manifest, a note)."""
    from clip4clip_dali.data.presampled import Sampling

    pipelines = str(REPO / "pipelines")
    if pipelines not in sys.path:
        sys.path.insert(0, pipelines)
    import make_shards

    data = make_cfg(args, src["data_path"], src["features_path"]).data
    sampling = Sampling.from_config(data)
    crf = args.presample_crf
    out = Path(args.cache_dir) / "prepared" / (
        f"{src['key']}--shards-{codec}-r{sampling.image_resolution}-m{sampling.max_frames}"
        f"-ff{sampling.feature_framerate}-sp{sampling.slice_framepos}-{args.shard_size}"
        + ("" if crf is None else f"-crf{crf}"))
    manifest = out / make_shards.MANIFEST
    if not manifest.exists():
        log(f"writing {src['features_path']} as tar shards into {out}")
        clips, _ = prepared_copy(args, src["features_path"], src["key"], "presampled", codec)
        s = make_shards.make_shards(data, out, sampling, codec, crf, args.shard_size,
                                    workers=min(usable_cores(), 16), clips=clips)
        if s["failed"]:
            raise RuntimeError(f"make_shards.py failed on {len(s['failed'])} clip(s)")
    shards = len(list(out.glob("*.tar")))
    return manifest, (f"tar shards by pipelines/make_shards.py (pre-sampled ({sampling.describe()}), "
                      f"{codec}, {shards} shards of <= {args.shard_size}), read by offset")


def make_cfg(args, data_path: Path | None, features_path: Path | None, overrides=()):
    from clip4clip_dali.config import load_config

    sets = [f"data.max_frames={args.max_frames}", f"data.image_resolution={args.resolution}",
            f"data.num_workers={args.workers}", f"data.dali_threads={args.workers}",
            f"data.prefetch={args.prefetch}", "model.pretrained=none"]
    if data_path is not None:
        sets += [f"data.data_path={data_path}", f"data.features_path={features_path}"]
    return load_config(None, sets + list(overrides))


def load_bench_split(args, data_path: Path, features_path: Path, split: str, overrides=()):
    """(cfg, MSVDSplit of ``split``), at most --max-videos videos, the first ones listed."""
    from clip4clip_dali.data.dataset import load_split

    cfg = make_cfg(args, data_path, features_path, overrides)
    sp = load_split(cfg.data, split)
    if args.max_videos and sp.num_videos > args.max_videos:
        import dataclasses

        keep = args.max_videos
        sel = np.flatnonzero(sp.caption_video < keep)
        extra = {"locations": sp.locations[:keep]} if hasattr(sp, "locations") else {}
        sp = dataclasses.replace(sp, video_ids=sp.video_ids[:keep],
                                 video_paths=sp.video_paths[:keep],
                                 video_info=sp.video_info[:keep],
                                 captions=[sp.captions[i] for i in sel],
                                 caption_video=sp.caption_video[sel], **extra)
    return cfg, sp


def _sources(args) -> list[dict]:
    """The source sets: [{label, key, codec, data_path, features_path, note}]."""
    if args.data_path:
        dp = Path(args.data_path)
        fp = Path(args.features_path) if args.features_path else dp
        return [{"label": args.label or f"user:{dp.name}", "key": f"user-{dp.name}",
                 "codec": "as found", "data_path": dp, "features_path": fp,
                 "note": f"user data {dp} (split {args.split})"}]
    out = []
    cache = Path(args.cache_dir)
    sizes = [s.strip() for s in args.clip_size.split(",") if s.strip()]
    for clip_size, codec in ((z, c.strip()) for z in sizes for c in args.codecs.split(",")
                             if c.strip()):
        if clip_size == "native":
            dp = native_synthetic_dataset(cache, codec, args.videos, args.seed)
            note = f"{args.videos} synthetic clips (package generator, native sizes)"
            geometry = "native"
        else:
            size = parse_size(clip_size)
            fps = Fraction(args.clip_fps).limit_denominator(1001)
            dp = bench_dataset(cache, codec, args.videos, size, fps, args.clip_seconds,
                               args.seed, args.gop)
            note = (f"{args.videos} drawn clips {size[0]}x{size[1]} @ {float(fps):g} fps, "
                    f"{args.clip_seconds[0]:g}-{args.clip_seconds[1]:g} s, GOP {args.gop}")
            geometry = f"{clip_size}-{float(fps):.3g}fps"
        out.append({"label": f"synthetic-{codec}-{geometry}", "key": dp.name, "codec": codec,
                    "data_path": dp, "features_path": dp / "videos", "note": note})
    return out


def prepare_shapes(args) -> list[str]:
    shapes = [s.strip() for s in args.prepare.split(",") if s.strip()]
    bad = [s for s in shapes if s not in PREPARE_SHAPES]
    if bad or not shapes:
        raise SystemExit(f"error: --prepare takes {', '.join(PREPARE_SHAPES)}, not {args.prepare!r}")
    return shapes


def datasets(args) -> list[dict]:
    """The clip sets to measure: [{label, source, shape, codec, data_path, features_path, note}]."""
    out = []
    for src in _sources(args):
        codec = args.prepare_codec
        if codec == "auto":
            codec = src["codec"] if src["codec"] in PRESAMPLE_CODECS else "vp9"
        for shape in prepare_shapes(args):
            if shape == "raw":
                out.append({**src, "source": src["label"], "shape": "raw"})
                continue
            if shape == "shards":
                manifest, how = shard_copy(args, src, codec)
                out.append({**src, "label": f"{src['label']}:shards-{codec}", "source": src["label"],
                            "shape": shape, "codec": codec, "data_path": manifest,
                            "features_path": manifest, "overrides": ["data.dataset=shards"],
                            "note": f"{src['note']}; {how}"})
                continue
            fp, how = prepared_copy(args, src["features_path"], src["key"], shape, codec)
            crf = f"-crf{args.presample_crf}" if shape == "presampled" and \
                args.presample_crf is not None else ""
            out.append({**src, "label": f"{src['label']}:{shape}-{codec}{crf}", "source": src["label"],
                        "shape": shape, "codec": codec, "features_path": fp,
                        "note": f"{src['note']}; {how}"})
    return out
