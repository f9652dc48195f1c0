"""Peak resident memory of a training epoch streamed from tar shards, at two collection sizes.

    python benchmarks/shards_memory.py [--samples 2000 8000] [--work DIR]

A few drawn clips are pre-sampled and written as shards by ``pipelines/make_shards.py``; a
larger shard set is then packed from those clips repeated under new ids (the loader neither
knows nor cares), and each size trains one epoch of the DALI shard loader (the batches only,
no model) in a fresh process. Streaming should hold a bounded window (DALI's prefetch queue
and the epoch plan), not the data set: the peaks should be about equal. Prints a JSON line
per size and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "pipelines", REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

FRAMES, RES = 4, 32


def base_set(work: Path) -> Path:
    """Drawn clips as a small shard set (cached in ``work``)."""
    import make_shards as ms
    from dali_fixtures import CPU_SPECS, data_config, make_dataset

    from clip4clip_dali.data.presampled import Sampling

    out = work / "base"
    if not (out / ms.MANIFEST).exists():
        src = data_config(make_dataset(work / "src", [s for s in CPU_SPECS if s["codec"] == "vp9"]
                                       * 3), max_frames=FRAMES, image_resolution=RES)
        ms.make_shards(src, out, Sampling.from_config(src), shard_size="1000", workers=2)
    return out


def big_set(work: Path, base: Path, samples: int) -> Path:
    """``samples`` samples cycling the base set's clips, 1000 a shard."""
    import make_shards as ms

    out = work / f"big-{samples}"
    if (out / ms.MANIFEST).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    doc = json.loads((base / ms.MANIFEST).read_text())
    clips = []
    for shard in doc["splits"]["train"]["shards"]:
        import tarfile

        with tarfile.open(base / shard["tar"]) as tar:
            for rec in shard["samples"]:
                data = tar.extractfile(f"{rec['key']}.webm").read()
                path = work / f"clip-{len(clips)}.webm"
                path.write_bytes(data)
                clips.append((path, rec))
    group_size, shards = 1000, []
    for start in range(0, samples, group_size):
        group = []
        for i in range(start, min(samples, start + group_size)):
            path, rec = clips[i % len(clips)]
            group.append({"id": f"v{i:07d}", "captions": rec["captions"], "split": "train",
                          "clip": str(path), "bytes": path.stat().st_size,
                          "record": {"frames": rec["frames"], "indices": list(range(rec["frames"])),
                                     "source": "repeated"}})
        n = len(shards)
        tar, idx = out / f"train-{n:06d}.tar", out / f"train-{n:06d}.idx"
        records = ms.write_shard(tar, idx, group, "webm")
        shards.append({"tar": tar.name, "index": idx.name, "bytes": tar.stat().st_size,
                       "samples": records})
    doc["splits"] = {"train": {"caption_per_epoch": True, "samples": samples, "shards": shards}}
    ms.write_json(out / ms.MANIFEST, doc)
    return out


def epoch(manifest: str) -> None:
    """(child) one training epoch of batches; prints peak RSS before and after."""
    from clip4clip_dali.config import DataConfig
    from clip4clip_dali.data.loaders.dali_shards import ShardLoader
    from clip4clip_dali.data.dataset import load_split

    cfg = DataConfig(dataset="shards", data_path=manifest, max_frames=FRAMES,
                     image_resolution=RES, dali_threads=2, prefetch=2)
    split = load_split(cfg, "train")
    loader = ShardLoader(split, cfg, "train", 16, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["video_index"])
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"samples": split.num_videos, "read": n, "seconds": round(dt, 1),
                      "peak_rss_mb_before_epoch": round(before, 1),
                      "peak_rss_mb_after_epoch": round(peak, 1),
                      "load_average": os.getloadavg()}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "clip4clip-shards-mem"))
    ap.add_argument("--epoch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epoch:
        epoch(args.epoch)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = base_set(work)
    rows = []
    for n in args.samples:
        manifest = big_set(work, base, n) / "manifest.json"
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        out = subprocess.run([sys.executable, __file__, "--epoch", str(manifest)], env=env,
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        a, b = rows[0]["peak_rss_mb_after_epoch"], rows[-1]["peak_rss_mb_after_epoch"]
        print(f"peak RSS: {a:.0f} MB over {rows[0]['samples']} samples, {b:.0f} MB over "
              f"{rows[-1]['samples']} samples (x{b / a:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
