"""``benchmarks/throughput.py``'s flags and main: build the run's context, run the sections
asked for, write the report."""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import datasets
from .common import cpu_model, gpu_info, log, machine_name, peak_tflops, usable_cores, versions
from .loaders import start_worker_server
from .report import Report, merge
from .sections import BY_NAME, SECTIONS

HERE = Path(__file__).resolve().parents[1]
QUICK = dict(videos=6, clip_size="96x72", clip_fps=15.0, clip_seconds=(2.0, 4.0), codecs="vp9",
             max_frames=4, resolution=64)


@dataclass
class Context:
    args: argparse.Namespace
    rep: Report
    device: object  # torch.device
    has_cuda: bool
    peak: float | None
    peak_src: str


def parse_args(argv=None, description=""):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI-sized run: tiny model, 6 small clips, 64 px, 2 steps")
    p.add_argument("--sections", default=",".join(s.NAME for s in SECTIONS if s.DEFAULT),
                   help=f"comma separated, of: {', '.join(BY_NAME)}")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=str(HERE / "results"), help="output folder")
    p.add_argument("--name", default=None, help="file stem (default: machine and date)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    datasets.add_args(p)
    for s in SECTIONS:
        s.add_args(p)
    args = p.parse_args(argv)
    unknown = [s for s in _sections(args) if s not in BY_NAME]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    if args.quick:
        quick = dict(QUICK)
        for s in SECTIONS:
            quick.update(s.QUICK)
        for k, v in quick.items():
            if getattr(args, k) == p.get_default(k):  # flags given explicitly win
                setattr(args, k, v)
        if not args.no_compile:
            args.no_compile = "skipped in --quick (compiling takes minutes on a CPU)"
        if args.name is None:
            args.name = "quick"
    return args


def _sections(args) -> list[str]:
    return [s.strip() for s in args.sections.split(",") if s.strip()]


def main(argv=None, description="") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--merge":
        ap = argparse.ArgumentParser(prog="throughput.py --merge")
        ap.add_argument("--merge", nargs="+", required=True)
        ap.add_argument("--out", required=True)
        ap.add_argument("--name", required=True)
        a = ap.parse_args(argv)
        return merge(a.merge, Path(a.out), a.name)
    args = parse_args(argv, description)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    has_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and has_cuda))
                          else "cpu")
    if device.type == "cuda" and not has_cuda:
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    gpu = gpu_info() if device.type == "cuda" else None
    peak, peak_src = peak_tflops(gpu, args.peak_tflops)
    if args.e2e_variants is None:
        args.e2e_variants = "compiled_amp_bf16" if device.type == "cuda" else "eager_fp32"
    name = args.name or machine_name(gpu)
    meta = {"name": name, "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name] + sys.argv),
            "device": device.type, "cpu": {"model": cpu_model(), "cores": usable_cores(),
                                           "torch_threads": torch.get_num_threads()},
            "gpu": gpu, "versions": versions(), "quick": args.quick,
            "load_average_at_start": list(os.getloadavg()),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}}
    rep = Report(Path(args.out), name, meta)
    log(f"writing {rep.path('json')} (device {device}, {usable_cores()} cores)")
    ctx = Context(args, rep, device, has_cuda, peak, peak_src)
    start_worker_server()
    t0 = time.perf_counter()
    for s in SECTIONS:  # registry order, whatever order --sections names them in
        if s.NAME in _sections(args):
            try:
                s.run(ctx)
            except Exception as e:
                rep.error(f"{s.NAME} section", e)
    rep.doc["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    rep.doc["meta"]["load_average_at_end"] = list(os.getloadavg())
    png_err = rep.finish()
    print()
    print(rep.path("md").read_text())
    log(f"done in {rep.doc['meta']['seconds']} s: {rep.path('json')}, {rep.path('md')}"
        + ("" if png_err else f", {rep.path('png')}"))
    return 0
