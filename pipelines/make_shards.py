"""Write a dataset (msvd, msrvtt or jsonl; every split) as tar shards of pre-sampled clips.

    python pipelines/make_shards.py --config configs/msvd_meanP.yaml --out data/msvd/shards \
        [--shard-size 1000 | 512MB] [--workers K] [--splits train,val,test] [--codec vp9|h264]

then train with ``data.dataset=shards data.data_path=data/msvd/shards/manifest.json``.

Two stages. (1) Every video the splits list is pre-sampled (``presample.presample_one``: the
same clip bytes ``prepare_msvd.py --presample`` writes, so the same frames) into
``<out>/.work/clips`` by a process pool; a clip already there that verifies is kept, a video
that cannot be pre-sampled is reported and left out. (2) Per split, the clips are packed in
listing order into ``<split>-NNNNNN.tar`` of ``--shard-size`` samples or bytes: per sample
``<key>.webm`` and ``<key>.json`` (id, captions, split, source frame indices; keys are 6 digits,
far below DALI's 100-character limit) and a DALI index ``<split>-NNNNNN.idx``. A shard already
there whose index lists exactly the planned samples and whose size matches is kept; any other
(half-written) one is written again (``.part`` files, renamed when complete). The manifest
(``clip4clip_dali/data/shards.py``) is written last; then the work folder is removed.

A non-empty ``--out`` that is not a shard set of this tool is refused (nothing is deleted);
one written with another sampling is refused too, naming both values.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from clip4clip_dali.data.presampled import Sampling, sampling_mismatch  # noqa: E402
from clip4clip_dali.data.shards import CLIP_EXT, FORMAT, MANIFEST, VERSION  # noqa: E402
from clip4clip_dali.data.shards_store import Member, format_index, parse_index  # noqa: E402
from clip4clip_dali.errors import UserError, run_cli  # noqa: E402
from clip4clip_dali.workers import clean_context  # noqa: E402

import presample as pre  # noqa: E402

log = logging.getLogger("clip4clip_dali")

MARKER = ".clip4clip_shards.json"  # written first: says the folder is ours, and its sampling
WORK = ".work"


def parse_size(text: str) -> tuple[str, int]:
    """``--shard-size``: ("samples", N) or ("bytes", N) from "1000", "512MB", "2GB", "64KB"."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B)?\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1)) < 1:
        raise UserError(f"--shard-size {text!r}: give a number of samples (1000) or a size "
                        f"(512MB, 2GB).")
    if not m.group(2):
        return "samples", int(m.group(1))
    unit = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)[0].lower()]
    return "bytes", int(m.group(1)) * unit


def check_out(out: Path, sampling: Sampling, codec: str) -> None:
    """Refuse an --out that holds anything but this tool's shards of the same sampling."""
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder.")
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise UserError(f"--out {out} is not empty and is not a shard set written by this tool "
                        f"(no {MARKER}); choose a new or empty folder (nothing was changed).")
    if marker.is_file():
        doc = json.loads(marker.read_text())
        recorded = Sampling.from_json(doc["sampling"])
        diff = sampling_mismatch(recorded, sampling)
        if doc.get("codec") != codec:
            diff.append(f"the codec is {doc.get('codec')} there but {codec} now")
        if diff:
            raise UserError(f"--out {out} holds shards pre-sampled with {recorded.describe()} "
                            f"({'; '.join(diff).replace('config', 'flags')}); choose another "
                            f"--out.")
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"format": FORMAT, "sampling": sampling.to_json(), "codec": codec})


def write_json(path: Path, doc) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def check_clips(clips: Path, sampling: Sampling, codec: str) -> None:
    from clip4clip_dali.data.presampled import read_presampled

    pset = read_presampled(clips)
    if pset is None:
        raise UserError(f"--clips {clips} is not a pre-sampled set (no record of its sampling); "
                        f"write it with prepare_msvd.py --presample, or leave --clips out.")
    diff = sampling_mismatch(pset.sampling, sampling)
    if pset.codec != codec:
        diff.append(f"the codec is {pset.codec} there but {codec} now")
    if diff:
        raise UserError(f"--clips {clips} was pre-sampled with {pset.sampling.describe()} "
                        f"({'; '.join(diff)}); leave --clips out or give a matching set.")


def dataset_splits(data, splits: list[str] | None) -> dict:
    """split -> SplitListing of the config's dataset (no video opened)."""
    from clip4clip_dali.data.dataset import list_split, split_names
    from clip4clip_dali.data.split import report_missing

    names = splits or split_names(data)
    out = {}
    for name in names:
        listing = list_split(data, name)
        report_missing(listing)
        out[name] = listing
    return out


def presample_all(videos: dict[str, Path], clips: Path, sampling: Sampling, codec: str,
                  crf, workers: int) -> dict[str, tuple]:
    """name -> (status, clip path, detail, record) for every video, with a progress bar."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    for name in videos:  # path-like ids (JSONL) keep their folders
        (clips / name).parent.mkdir(parents=True, exist_ok=True)
    args = (str(clips), sampling, codec, crf, False)
    results: dict[str, tuple] = {}
    columns = (TextColumn("pre-sampling"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=not sys.stderr.isatty()) as bar:
        task = bar.add_task("clips", total=len(videos))

        def done(r):
            results[r[0]] = r[1:]
            if r[1] == "failed":
                log.warning("cannot pre-sample %s (left out): %s", videos[r[0]], r[3])
            bar.advance(task)

        if workers == 1:
            for name, src in videos.items():
                done(pre.presample_one(name, str(src), *args))
        else:
            with ProcessPoolExecutor(workers, mp_context=clean_context(("av",))) as pool:
                futs = [pool.submit(pre.presample_one, name, str(src), *args)
                        for name, src in videos.items()]
                for f in as_completed(futs):
                    done(f.result())
    return results


def plan_shards(samples: list[dict], kind: str, limit: int) -> list[list[dict]]:
    """Consecutive groups of at most ``limit`` samples, or of about ``limit`` bytes."""
    shards, cur, size = [], [], 0
    for s in samples:
        if cur and (len(cur) >= limit if kind == "samples" else size + s["bytes"] > limit):
            shards.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += s["bytes"] + 2048  # two headers and padding, roughly
    if cur:
        shards.append(cur)
    return shards


def _meta_bytes(s: dict) -> bytes:
    return json.dumps({"id": s["id"], "captions": s["captions"], "split": s["split"],
                       "indices": s["record"]["indices"], "frames": s["record"]["frames"],
                       "source": s["record"]["source"]}, ensure_ascii=False).encode("utf-8")


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid = size, 0, 0o644, 0, 0
    return ti


def write_shard(tar_path: Path, idx_path: Path, group: list[dict], ext: str) -> list[dict]:
    """Write one shard and its index (``.part`` files renamed when complete); returns the
    manifest's sample records."""
    tmp_tar, tmp_idx = tar_path.with_suffix(".tar.part"), idx_path.with_suffix(".idx.part")
    index, records = [], []
    with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tar:
        for k, s in enumerate(group):
            key = f"{k:06d}"
            members = []
            for suffix, data in ((ext, Path(s["clip"]).read_bytes()), ("json", _meta_bytes(s))):
                name = f"{key}.{suffix}"
                offset = tar.offset + tarfile.BLOCKSIZE  # one USTAR header block before the data
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
                members.append(Member(suffix, offset, len(data), name))
            index.append(members)
            records.append({"key": key, "id": s["id"], "captions": s["captions"],
                            "frames": s["record"]["frames"]})
    tmp_idx.write_text(format_index(index))
    os.replace(tmp_tar, tar_path)
    os.replace(tmp_idx, idx_path)
    return records


def shard_is_complete(tar_path: Path, idx_path: Path, group: list[dict], ext: str) -> bool:
    """An existing shard lists exactly ``group``'s clips (same sizes) and is whole."""
    try:
        index = parse_index(idx_path.read_text(), str(idx_path))
        size = tar_path.stat().st_size
    except (OSError, ValueError):
        return False
    if len(index) != len(group):
        return False
    end = 0
    for k, (members, s) in enumerate(zip(index, group)):
        clip = members.get(ext)
        if clip is None or clip.name != f"{k:06d}.{ext}" or clip.size != s["bytes"] \
                or "json" not in members:
            return False
        end = max(end, members["json"].offset + members["json"].size)
    return end <= size and size % tarfile.RECORDSIZE == 0


def pack_split(out: Path, split: str, samples: list[dict], kind: str, limit: int,
               ext: str) -> tuple[list[dict], int]:
    """(manifest shard entries, shards kept from an earlier run)."""
    shards, kept = [], 0
    for n, group in enumerate(plan_shards(samples, kind, limit)):
        tar_path, idx_path = out / f"{split}-{n:06d}.tar", out / f"{split}-{n:06d}.idx"
        if shard_is_complete(tar_path, idx_path, group, ext):
            kept += 1
            records = [{"key": f"{k:06d}", "id": s["id"], "captions": s["captions"],
                        "frames": s["record"]["frames"]} for k, s in enumerate(group)]
        else:
            records = write_shard(tar_path, idx_path, group, ext)
        shards.append({"tar": tar_path.name, "index": idx_path.name,
                       "bytes": tar_path.stat().st_size, "samples": records})
    return shards, kept


def make_shards(data, out: Path, sampling: Sampling, codec: str = "vp9", crf=None,
                shard_size: str = "512MB", workers: int = 0,
                splits: list[str] | None = None, clips: Path | None = None) -> dict:
    """Write the shard set; returns a summary (counts, failures, manifest path). ``clips``: a
    folder of clips ``prepare_msvd.py --presample`` wrote with this sampling and codec (for
    the dataset's ids), reused where they verify and kept; default: a work folder in ``out``,
    removed at the end."""
    from clip4clip_dali.data.dataset import output_names

    if codec not in CLIP_EXT:
        raise UserError(f"--codec must be one of {', '.join(CLIP_EXT)}, not {codec}.")
    kind, limit = parse_size(shard_size)
    t0 = time.time()
    listings = dataset_splits(data, splits)
    check_out(out, sampling, codec)
    ids = list(dict.fromkeys(v for lst in listings.values() for v in lst.usable))
    names = output_names(ids)
    sources = {}
    for lst in listings.values():
        sources.update({names[v]: lst.videos[v] for v in lst.usable})
    workers = workers or max(1, os.cpu_count() or 1)
    if clips is not None:
        check_clips(Path(clips), sampling, codec)
    results = presample_all(sources, Path(clips) if clips else out / WORK / "clips", sampling,
                            codec, crf, workers)
    ext = CLIP_EXT[codec]
    manifest_splits, kept, total = {}, 0, 0
    for split, lst in listings.items():
        samples = []
        for v in lst.usable:
            status, clip, _detail, record = results[names[v]]
            if status == "failed":
                continue
            samples.append({"id": v, "captions": list(lst.captions[v]), "split": split,
                            "clip": clip, "bytes": os.path.getsize(clip), "record": record})
        if not samples:
            log.warning("split %s: no video could be pre-sampled; it is left out", split)
            continue
        shards, k = pack_split(out, split, samples, kind, limit, ext)
        kept += k
        total += len(shards)
        manifest_splits[split] = {"caption_per_epoch": bool(lst.caption_per_epoch),
                                  "samples": len(samples), "shards": shards}
    failed = {v: results[names[v]][2] for v in ids if results[names[v]][0] == "failed"}
    doc = {"format": FORMAT, "version": VERSION, "sampling": sampling.to_json(), "codec": codec,
           "crf": pre.DEFAULT_CRF[codec] if crf is None else int(crf), "dataset": data.dataset,
           "splits": manifest_splits, "failed": failed}
    write_json(out / MANIFEST, doc)
    shutil.rmtree(out / WORK, ignore_errors=True)
    return {"videos": len(ids), "failed": failed, "shards": total, "kept_shards": kept,
            "samples": {s: e["samples"] for s, e in manifest_splits.items()},
            "manifest": str(out / MANIFEST), "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    import prepare_msvd as prep

    p = argparse.ArgumentParser(prog="pipelines/make_shards.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a training config: its dataset (msvd, "
                   "msrvtt, jsonl) and sampling keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of --config (e.g. data.max_frames=8)")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier run's)")
    p.add_argument("--shard-size", default="512MB",
                   help="samples per shard (1000) or bytes (512MB, the default)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--splits", help="comma-separated splits (default: every split)")
    p.add_argument("--codec", choices=sorted(CLIP_EXT), default="vp9",
                   help="vp9 (default; DALI decodes it on CPU and GPU) or h264 (GPU only)")
    p.add_argument("--crf", type=int, default=None, help="quality (default: presample.py's)")
    p.add_argument("--clips", default=None, help="reuse a prepare_msvd.py --presample folder of "
                   "the same sampling (clips that verify are packed as they are)")
    for key in ("feature_framerate", "max_frames", "slice_framepos", "image_resolution"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help=f"data.{key} (overrides --config)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s: %(message)s")
    from clip4clip_dali.config import load_config

    data = load_config(args.config, args.set).data
    if data.dataset == "shards":
        raise UserError(f"{args.config} already reads shards; give the config of the source "
                        f"dataset (msvd, msrvtt or jsonl).")
    sampling = prep.sampling_from_args(args)
    s = make_shards(data, Path(args.out), sampling, args.codec, args.crf, args.shard_size,
                    args.workers, args.splits.split(",") if args.splits else None,
                    Path(args.clips) if args.clips else None)
    print(f"wrote {s['shards']} shards ({s['kept_shards']} kept from an earlier run) of "
          f"{s['videos'] - len(s['failed'])} videos in {s['seconds']} s: "
          + ", ".join(f"{k} {n}" for k, n in s["samples"].items())
          + f"; manifest {s['manifest']}")
    if s["failed"]:
        print(f"{len(s['failed'])} video(s) could not be pre-sampled (left out): "
              + "; ".join(f"{v}: {why}" for v, why in list(s["failed"].items())[:10]))
    print(f"train with: --set data.dataset=shards --set data.data_path={s['manifest']}")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    run_cli(main)
