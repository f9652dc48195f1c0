#!/usr/bin/env python
"""Transcode raw MSVD (or any folder of videos) into a DALI-friendly copy, then write its manifest.

    python pipelines/prepare_msvd.py --src data/msvd/YouTubeClips --out data/msvd/videos_vp9 \\
        [--short-side 224] [--fps 3] [--codec vp9|h264|mjpeg] [--gop 0] [--crf 30] [--workers N]
    python pipelines/prepare_msvd.py --config configs/msrvtt_meanP.yaml --out data/msrvtt/videos_vp9
        (the videos of any dataset a config describes: MSVD, MSR-VTT, JSONL, DiDeMo,
        ActivityNet, LSMDC; for JSONL it also writes <out>/<name>.jsonl pointing at the
        copies, with the same ids and splits)

What it does to each video (found under --src by ``msvd.find_videos``, any container):
- scales the short side to --short-side (aspect kept, portrait too; never upscales; even sizes),
- resamples to --fps frames per second while keeping the source's duration:
  ``frames_out = max(1, round(duration * fps))`` with ``duration = frames_in / fps_in`` (frames
  as decoded, the manifest's count), and output frame k is the source frame shown at time
  k / fps (index ``floor(k * fps_in / fps)``). CLIP4Clip's 1 frame/s sampling then picks
  (nearly) the same moments in the prepared clip as in the raw one, as with the original's
  compress_video.py (ffmpeg ``-r 3``);
- encodes with a short keyframe interval (--gop, default: one keyframe per second of video,
  so every frame CLIP4Clip samples at 1 frame/s with an integer --fps is a keyframe) into
  VP9/WebM (default: DALI decodes it on CPU and GPU), H.264/MP4 (GPU only) or MJPEG/AVI;
- verifies the output: it must decode completely, with the expected number of frames and
  codec; otherwise the original is copied over instead (and counted in the summary), so the
  dataset stays complete (use the reference loader, or a GPU, for those);
- writes outputs atomically (temp file + rename), so it is resumable: an output that exists and
  verifies is skipped.

With ``--presample`` it writes instead, per video, a clip holding exactly the frames CLIP4Clip
samples, already at the model's resolution (``pipelines/presample.py``; sampling keys from
``--config`` or the same flags), and records the sampling in ``<out>/.clip4clip_presampled.json``:

    python pipelines/prepare_msvd.py --presample --config configs/msvd_meanP.yaml \
        --src data/msvd/MSVD_Videos --out data/msvd/presampled [--codec vp9|h264] [--crf N]

A video that cannot be pre-sampled is reported and left out (a copy of the original would not
hold what the record says).

Before writing anything it refuses an --out holding the other mode's output, the same mode
made with other options (``--force`` redoes them), files it did not write, or a file
(``pipelines/prepare_out.py``), and out-of-range arguments.

Uses PyAV only (no ffmpeg binary needed). Ends with a summary and the manifest
(``<out>/.clip4clip_manifest.json``), which training then reuses.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from clip4clip_dali.data.presampled import Sampling, write_presampled  # noqa: E402
from clip4clip_dali.errors import UserError, run_cli  # noqa: E402
from clip4clip_dali.workers import clean_context  # noqa: E402

import prepare_out  # noqa: E402  (pipelines/prepare_out.py, beside this file)
import presample as pre  # noqa: E402  (pipelines/presample.py, beside this file)

log = logging.getLogger("clip4clip_dali")

CODECS = {  # --codec -> (encoder, extension, codec name as probed, pixel format)
    "vp9": ("libvpx-vp9", ".webm", "vp9", "yuv420p"),
    "h264": ("libx264", ".mp4", "h264", "yuv420p"),
    "mjpeg": ("mjpeg", ".avi", "mjpeg", "yuvj420p"),
}


@dataclass
class Options:
    short_side: int = 224
    fps: float = 3.0
    codec: str = "vp9"
    gop: int = 0  # 0: one keyframe per second
    crf: int = 30
    max_duration: float = 0.0  # > 0: keep at most this many seconds (tests, quick trials)
    threads: int = 1  # encoder threads per worker
    presample: Optional[Sampling] = None  # set: pre-sampled clips (codec vp9|h264, crf None: default)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side scaled to ``short_side`` (never up), both even."""
    short = min(width, height)
    scale = min(1.0, short_side / short) if short > 0 else 1.0
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def planned_frames(src_frames: int, src_fps: float, out_fps: float,
                   max_duration: float = 0.0) -> list[int]:
    """Source frame index for each output frame (same duration at ``out_fps``)."""
    duration = src_frames / src_fps
    if max_duration > 0:
        duration = min(duration, max_duration)
    n_out = max(1, int(round(duration * out_fps)))
    return [min(int(math.floor(k * src_fps / out_fps + 1e-6)), src_frames - 1)
            for k in range(n_out)]


def _expected_frames(info, opts: Options) -> int:
    return len(planned_frames(info.frames, info.fps, opts.fps, opts.max_duration))


def _verify(path: Path, expected: int, codec: str, fps: float) -> str | None:
    """None if ``path`` decodes completely to ``expected`` frames of ``codec``, else why not."""
    from clip4clip_dali.data.manifest import probe_video

    info = probe_video(path, count="decode")
    if not info.ok:
        return info.error or "no frames"
    if info.codec != codec:
        return f"codec {info.codec}, expected {codec}"
    if info.frames != expected:
        return f"{info.frames} frames, expected {expected}"
    if abs(info.fps - fps) > 0.01 * fps:
        return f"{info.fps:.4g} frames/s, expected {fps:.4g}"
    return None


def _encode(src: Path, dst: Path, info, opts: Options) -> None:
    import av

    encoder, _ext, _name, pix_fmt = CODECS[opts.codec]
    plan = planned_frames(info.frames, info.fps, opts.fps, opts.max_duration)
    w, h = output_size(info.width, info.height, opts.short_side)
    rate = Fraction(opts.fps).limit_denominator(1001)
    gop = opts.gop or max(1, int(round(opts.fps)))
    # For each source frame, how many output frames show it (0, 1 or more).
    uses: dict[int, int] = {}
    for s in plan:
        uses[s] = uses.get(s, 0) + 1
    last = plan[-1]
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        istream = inp.streams.video[0]
        istream.thread_type = "AUTO"
        stream = out.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        frame_tb = Fraction(1, 1) / rate
        stream.time_base = frame_tb
        ctx = stream.codec_context
        ctx.time_base = frame_tb
        ctx.gop_size = gop
        ctx.thread_count = opts.threads
        if opts.codec == "vp9":
            stream.options = {"crf": str(opts.crf), "b": "0", "deadline": "good",
                              "cpu-used": "4", "row-mt": "1", "auto-alt-ref": "0",
                              "lag-in-frames": "0"}
        elif opts.codec == "h264":
            stream.options = {"crf": str(max(0, opts.crf - 12)), "preset": "fast",
                              "bf": "0", "keyint_min": str(gop), "sc_threshold": "0"}
        else:
            stream.options = {"q:v": "3"}
            ctx.qmin, ctx.qmax = 2, 4
        k = 0
        for n, frame in enumerate(inp.decode(istream)):
            if n > last:
                break
            count = uses.get(n, 0)
            if not count:
                continue
            small = frame.reformat(width=w, height=h, format=pix_fmt, interpolation="AREA")
            for _ in range(count):
                small.pts = k
                small.time_base = frame_tb  # the muxer may change stream.time_base
                for packet in stream.encode(small):
                    out.mux(packet)
                k += 1
        for packet in stream.encode():
            out.mux(packet)
    if k != len(plan):
        raise RuntimeError(f"the source decoded to fewer frames than its manifest says "
                           f"({k} of {len(plan)} output frames written)")


def prepare_one(vid: str, src: str, out_dir: str, opts: Options, force: bool = False) -> tuple[str, str, str, str]:
    """Transcode one video. Returns (id, status, output path, detail); status is one of
    transcoded, skipped (a verified output already there), copied (transcode failed: original
    copied) or failed (could not even copy)."""
    from clip4clip_dali.data.manifest import probe_video

    src_p, out = Path(src), Path(out_dir)
    _encoder, ext, codec_name, _pix = CODECS[opts.codec]
    dst = out / f"{vid}{ext}"
    dst.parent.mkdir(parents=True, exist_ok=True)  # ids of JSONL datasets may hold folders
    info = probe_video(src_p)
    others = [p for p in out.glob(f"{glob_escape(vid)}.*") if p != dst and p.stem == vid
              and not p.name.endswith(".part" + p.suffix)]
    if info.ok:
        expected = _expected_frames(info, opts)
        if dst.exists() and not force and _verify(dst, expected, codec_name, opts.fps) is None:
            return vid, "skipped", str(dst), ""
        tmp = out / f"{vid}.part{ext}"
        try:
            _encode(src_p, tmp, info, opts)
            why = _verify(tmp, expected, codec_name, opts.fps)
            if why is not None:
                raise RuntimeError(f"output failed verification: {why}")
            os.replace(tmp, dst)
            for p in others:  # an original copied by an earlier failed run
                p.unlink(missing_ok=True)
            return vid, "transcoded", str(dst), f"{info.frames}@{info.fps:.3g}->{expected}"
        except Exception as e:  # any encoder/decoder failure: keep the original instead
            tmp.unlink(missing_ok=True)
            detail = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    else:
        detail = f"unreadable source: {info.error}"
    copy = out / f"{vid}{src_p.suffix}"
    try:
        if copy != dst:
            dst.unlink(missing_ok=True)
        if not copy.exists() or copy.stat().st_size != src_p.stat().st_size:
            shutil.copy2(src_p, copy)
        return vid, "copied", str(copy), detail
    except OSError as e:
        return vid, "failed", "", f"{detail}; copy failed: {e}"


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def prepare(src_dir: Path | None, out_dir: Path, opts: Options, workers: int = 0,
            ids: list[str] | None = None, force: bool = False, manifest: bool = True,
            videos: dict[str, Path] | None = None) -> dict:
    """Transcode ``videos`` (output name -> file; default: every video under ``src_dir``)."""
    from clip4clip_dali.data.msvd import find_videos

    src_dir = None if src_dir is None else Path(src_dir)
    out_dir = Path(out_dir)
    if workers < 0:
        raise UserError(f"--workers {workers}: give 0 (one process per core) or more.")
    if src_dir is not None and not src_dir.is_dir():
        raise UserError(f"--src {src_dir} is not a folder; pass the folder holding the raw "
                        f"videos (e.g. YouTubeClips).")
    videos = find_videos(src_dir) if videos is None else videos
    if ids is not None:
        missing = [v for v in ids if v not in videos]
        if missing:
            raise UserError(f"{len(missing)} requested id(s) not found under {src_dir} "
                            f"(e.g. {', '.join(missing[:3])}).")
        videos = {v: videos[v] for v in ids}
    if not videos:
        raise UserError(f"no videos found under {src_dir}; pass the folder holding the raw "
                        f"MSVD clips (e.g. YouTubeClips) as --src.")
    if src_dir is not None and out_dir.resolve() == src_dir.resolve():
        raise UserError("--out must differ from --src (outputs would replace the originals).")
    records = prepare_out.check_out_dir(out_dir, opts, force)  # before anything is written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out_dir} cannot be created ({e.strerror}); choose a folder "
                        f"you can write.") from None
    workers = workers or max(1, (os.cpu_count() or 1))
    t0 = time.time()
    # Records are written first so that an interrupted run already names what it makes.
    if opts.presample is not None:
        write_presampled(out_dir, opts.presample, opts.codec, records)
        job, args = pre.presample_one, (str(out_dir), opts.presample, opts.codec,
                                        opts.crf, force)
    else:
        prepare_out.write_record(out_dir, opts)
        job, args = prepare_one, (str(out_dir), opts, force)
    results: dict[str, tuple] = {}
    if workers == 1:
        for vid, p in videos.items():
            r = job(vid, str(p), *args)
            results[r[0]] = r[1:]
            _progress(r, len(results), len(videos))
    else:
        with ProcessPoolExecutor(workers, mp_context=clean_context(("av",))) as pool:
            futs = [pool.submit(job, vid, str(p), *args) for vid, p in videos.items()]
            for f in as_completed(futs):
                r = f.result()
                results[r[0]] = r[1:]
                _progress(r, len(results), len(videos))
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r[0]] = counts.get(r[0], 0) + 1
    summary = {"videos": len(videos), **{k: counts.get(k, 0) for k in
               ("transcoded", "presampled", "skipped", "copied", "failed")},
               "seconds": round(time.time() - t0, 1), "codec": opts.codec, "fps": opts.fps,
               "short_side": opts.short_side,
               "copied_ids": sorted(v for v, r in results.items() if r[0] == "copied"),
               "failed_ids": sorted(v for v, r in results.items() if r[0] == "failed"),
               "outputs": {v: r[1] for v, r in results.items() if r[1]}}
    if opts.presample is not None:
        for vid, r in results.items():
            records.pop(vid, None)
            if r[3] is not None:
                records[vid] = r[3]
        write_presampled(out_dir, opts.presample, opts.codec, records,
                         crf=pre.DEFAULT_CRF[opts.codec] if opts.crf is None else opts.crf)
        summary["sampling"] = opts.presample.to_json()
    if manifest:
        from clip4clip_dali.data.manifest import load_manifest
        from clip4clip_dali.data.msvd import default_manifest_path

        paths = {v: Path(r[1]) for v, r in results.items() if r[1]}
        m = load_manifest(paths, default_manifest_path(out_dir))
        summary["manifest"] = str(default_manifest_path(out_dir))
        summary["unreadable"] = sorted(v for v, info in m.items() if not info.ok)
    return summary


def _progress(r, done: int, total: int) -> None:
    vid, status, _path, detail = r[:4]
    if status in ("copied", "failed"):
        log.warning("%s: %s (%s)", vid, status, detail)
    else:
        log.info("[%d/%d] %s: %s %s", done, total, vid, status, detail)


def check_arguments(args) -> None:
    """Out-of-range values, refused before anything is read or written."""
    bad = [(args.short_side < 8, "--short-side", "at least 8"),
           (not math.isfinite(args.fps) or args.fps <= 0, "--fps", "a positive number"),
           (args.gop < 0, "--gop", "0 (one keyframe a second) or more"),
           (args.crf is not None and not 0 <= args.crf <= 63, "--crf", "between 0 and 63"),
           (not math.isfinite(args.max_duration) or args.max_duration < 0, "--max-duration",
            "0 (whole clips) or more seconds"),
           (args.workers < 0, "--workers", "0 (one process per core) or more")]
    for is_bad, flag, want in bad:
        if is_bad:
            raise UserError(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: give {want}.")


def read_ids(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--ids {path} cannot be read ({getattr(e, 'strerror', None) or e}); "
                        f"give a text file with one video id a line.") from None
    ids = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not ids:
        raise UserError(f"--ids {path} lists no video id; give one id a line.")
    return ids


def sampling_from_args(args) -> Sampling:
    """The sampling keys: --config (+ --set) or the defaults, then the explicit flags."""
    from clip4clip_dali.config import load_config

    data = load_config(args.config, args.set).data
    for key in ("feature_framerate", "max_frames", "slice_framepos", "image_resolution"):
        if getattr(args, key) is not None:
            setattr(data, key, getattr(args, key))
    if data.max_frames < 1 or data.feature_framerate < 1 or data.image_resolution < 8 \
            or data.slice_framepos not in (0, 1, 2):
        raise UserError("--max-frames and --feature-framerate must be at least 1, "
                        "--image-resolution at least 8, --slice-framepos 0, 1 or 2.")
    return Sampling.from_config(data)


def config_videos(config: str, sets: list[str]):
    """(data config, video id -> output name, output name -> file) of a config's dataset."""
    from clip4clip_dali.config import load_config
    from clip4clip_dali.data.dataset import dataset_videos, output_names

    data = load_config(config, sets).data
    by_id = dataset_videos(data)
    names = output_names(by_id)
    return data, names, {names[v]: p for v, p in by_id.items()}


def point_config_at(data, names: dict[str, str], out: Path, outputs: dict[str, str]) -> str:
    """What to change in the config so it reads the prepared copies (JSONL: a new file)."""
    if data.dataset != "jsonl":
        return f"set data.features_path to {out}"
    from clip4clip_dali.data.jsonl import write_prepared

    path = write_prepared(data, out, {v: outputs[n] for v, n in names.items() if n in outputs})
    return f"wrote {path} (same ids and splits): set data.data_path to it"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pipelines/prepare_msvd.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="folder of raw videos (searched recursively)")
    p.add_argument("--config", help="a training config: without --src, its dataset's videos "
                   "(data.dataset msvd, msrvtt, jsonl, didemo, activitynet or lsmdc; every split); with --presample, the "
                   "sampling keys (data.feature_framerate, max_frames, slice_framepos, "
                   "image_resolution)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of --config, as for training (e.g. data.max_frames=8)")
    p.add_argument("--out", required=True, help="output folder (becomes data.features_path)")
    p.add_argument("--short-side", type=int, default=224, help="short side in pixels (default 224)")
    p.add_argument("--fps", type=float, default=3.0, help="output frame rate (default 3)")
    p.add_argument("--codec", choices=sorted(CODECS), default="vp9",
                   help="vp9 (default; DALI decodes it on CPU and GPU), h264 (GPU only), mjpeg")
    p.add_argument("--gop", type=int, default=0, help="keyframe interval in frames (default: 1 s)")
    p.add_argument("--crf", type=int, default=None,
                   help="VP9 quality, lower is better (default 30; H.264 uses crf-12); with "
                        f"--presample: {pre.DEFAULT_CRF['vp9']} for VP9, "
                        f"{pre.DEFAULT_CRF['h264']} for H.264, 0 = lossless VP9")
    g = p.add_argument_group("pre-sampled clips (--presample)")
    g.add_argument("--presample", action="store_true",
                   help="write clips holding only the frames CLIP4Clip samples, at the model's "
                        "resolution (vp9 or h264)")
    for key in ("feature_framerate", "max_frames", "slice_framepos", "image_resolution"):
        g.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help=f"data.{key} (overrides --config; default: the config's)")
    p.add_argument("--max-duration", type=float, default=0.0,
                   help="keep at most this many seconds of each clip (quick trials, tests)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--ids", help="file with the video ids to prepare (one a line); default all")
    p.add_argument("--force", action="store_true", help="redo outputs that already verify")
    p.add_argument("--no-manifest", action="store_true", help="do not write the manifest")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s: %(message)s")
    check_arguments(args)
    if args.presample and args.codec not in pre.CODECS:
        raise UserError(f"--presample writes {' or '.join(sorted(pre.CODECS))}, not "
                        f"{args.codec}.")
    ids = read_ids(args.ids) if args.ids else None
    opts = Options(short_side=args.short_side, fps=args.fps, codec=args.codec, gop=args.gop,
                   crf=30 if args.crf is None else args.crf, max_duration=args.max_duration)
    if args.presample:
        opts.crf, opts.presample = args.crf, sampling_from_args(args)
    if not args.src and not args.config:
        raise UserError("pass --src (a folder of videos) or --config (a dataset's videos).")
    data = names = videos = None
    if args.config and not args.src:
        data, names, videos = config_videos(args.config, args.set)
    s = prepare(Path(args.src) if args.src else None, Path(args.out), opts, args.workers, ids,
                args.force, manifest=not args.no_manifest, videos=videos)
    done = (f"{s['presampled']} pre-sampled ({opts.presample.describe()})" if args.presample
            else f"{s['transcoded']} transcoded")
    print(f"prepared {s['videos']} videos in {s['seconds']} s: {done}, "
          f"{s['skipped']} already done, {s['copied']} copied as they were (transcode failed), "
          f"{s['failed']} failed" + (f"; manifest {s['manifest']}" if "manifest" in s else ""))
    if s["failed_ids"]:
        print(f"failed (left out; training skips them): {', '.join(s['failed_ids'][:10])}")
    if s["copied_ids"]:
        print(f"copied unchanged (use loader=reference or a GPU for these): "
              f"{', '.join(s['copied_ids'][:10])}")
    if data is not None:
        print(point_config_at(data, names, Path(args.out), s["outputs"]))
    if s.get("unreadable"):
        print(f"unreadable (training will skip them): {', '.join(s['unreadable'][:10])}")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    # Run the module's importable copy: the pool's workers find its jobs by module name (they
    # never re-run the main script; see clip4clip_dali.workers).
    import prepare_msvd

    run_cli(prepare_msvd.main)
