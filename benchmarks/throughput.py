"""Benchmark suite: loader frames/s and training-step time, side by side with the original way.

    python benchmarks/throughput.py                       # full suite on this machine
    python benchmarks/throughput.py --quick               # CI-sized run (< 60 s on 2 cores)
    python benchmarks/throughput.py --sections loader --codecs vp9 --prepare 3fps,presampled
    python benchmarks/throughput.py --data-path data/msvd --features-path data/msvd/videos

Sections (``--sections``; registered in ``suite/sections.py``, one module each):

loader  steady frames/s (after the first batch, over >= 30 batches a pass; the first batch is
        start-up, reported apart) delivered by DALI on the GPU (K pipelines), DALI on the CPU,
        the frame cache, the reference PyAV DataLoader and the original CLIP4Clip way
        (``original_style.py``), same workers/threads, same clips: raw, 3 fps prepared and
        pre-sampled copies of one set (``--prepare``). A backend that cannot read a set is a row
        with status ``n/a`` and the reason.
step    ms/step, frames/s, peak memory and MFU of a real training step for eager fp32, eager
        amp_bf16 and compiled amp_bf16, with and without gradient checkpointing; model only and
        end to end (batches from a loader, the time waiting for them as a share).

Every timing: warm-up first, then repeats; median with p10/p90. Output: ``<out>/<name>.json``
(schema ``clip4clip-dali-benchmark/1``, rewritten after every row), ``.md`` and ``.png``, with a
"targets" block (measured, met yes / no / n/a). ``--merge a.json b.json --out DIR --name N``
combines separate runs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch and DALI start: with OpenMP's default busy-waiting, torch ops after DALI's threads
# run were 10-100x slower on a loaded machine. The CLIs set it too; every row here runs under it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):  # run from a checkout without installing
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from suite.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__.split("\n\n")[0]))
