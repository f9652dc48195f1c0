"""``throughput.py --sections decoders``: the CPU dry run of the decoders table gpu_all.sh
measures on a GPU (its GPU decoders and thread sweep, plus the CPU decoders, tiny clips): every
decoder is a row, measured on the CPU or saying why not (no CUDA device, not installed, a codec
DALI cannot read), and the side-by-side table is printed."""
from __future__ import annotations

import math
import re
from pathlib import Path

from bench_fixtures import DECODERS, GPU_DECODERS, bench_runs  # noqa: F401 (the fixture)

REPO = Path(__file__).resolve().parents[1]


def _gpu_all_decoders_flags() -> list[str]:
    """The --decoders list gpu_all.sh runs, so this dry run follows it."""
    text = (REPO / "benchmarks" / "gpu_all.sh").read_text()
    return re.search(r"--decoders (\S+)", text).group(1).split(",")


def test_decoders_section_cpu_dry_run(bench_runs):
    assert _gpu_all_decoders_flags() == GPU_DECODERS
    run = bench_runs["decoders"]  # the flags: bench_fixtures
    run.check()
    assert "## Decoders side by side" in run.log
    doc = run.doc()
    sec = doc["decoders"]
    assert len(sec["datasets"]) == 3  # raw, 3 fps prepared, pre-sampled
    for ds in sec["datasets"]:
        rows = {r["decoder"]: r for r in sec["rows"] if r["dataset"] == ds}
        assert set(rows) == set(DECODERS), ds
        for kind in ("torchcodec", "pyav", "opencv"):
            r = rows[kind]
            assert r["status"] == "ok", (ds, r)
            s = r["steady_frames_per_s"]
            assert math.isfinite(s["median"]) and s["median"] > 0
            assert r["batches_per_pass"] >= 3 and "float32" in r["output"]
        for kind in ("dali_nvdec", "torchcodec_cuda", "pynvc"):
            r = rows[kind]
            assert r["status"] == "n/a" and ("no CUDA device" in r["reason"]
                                             or "not installed" in r["reason"]), r
        dali = rows["dali_cpu"]
        if ds.endswith(":raw") or ":" not in ds:  # raw H.264: not DALI's CPU decoder's
            assert dali["status"] == "n/a" and "h264" in dali["reason"], dali
        else:  # prepared copies are VP9 (as gpu_all.sh's from the real MSVD clips)
            assert dali["status"] == "ok", dali
