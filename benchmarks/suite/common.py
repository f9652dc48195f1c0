"""Small helpers every section uses: logging, statistics, formatting, machine facts."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from pathlib import Path

import numpy as np

SCHEMA = "clip4clip-dali-benchmark/1"

# Dense bf16 tensor-core peaks (TFLOP/s), from the vendors' data sheets. Matched on the name
# torch reports, most specific first.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stats(values) -> dict:
    """median / p10 / p90 / min / max / n of a list of positive numbers."""
    a = np.asarray(list(values), dtype=np.float64)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "min": float(a.min()), "max": float(a.max()),
            "n": int(a.size)}


def na(reason: str, **fields) -> dict:
    return {"status": "n/a", "reason": reason, **fields}


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}" if text else type(e).__name__


def fmt(x, digits=1):
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_stat(s, digits=1):
    if not s:
        return "n/a"
    return f"{fmt(s['median'], digits)} ({fmt(s['p10'], digits)}–{fmt(s['p90'], digits)})"


def status_text(row: dict) -> str:
    return "ok" if row["status"] == "ok" else f"{row['status']}: {row.get('reason', '')}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


# (key, module, its distributions): a module not imported yet is looked up in the installed
# distributions' metadata, so a run that never builds a model does not import open_clip
# (seconds) for its version string.
_LIBS = [("torch", "torch", ("torch",)), ("torchvision", "torchvision", ("torchvision",)),
         ("dali", "nvidia.dali", ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali")),
         ("open_clip", "open_clip", ("open_clip_torch",)), ("pyav", "av", ("av",)),
         ("opencv", "cv2", ("opencv-python-headless", "opencv-python")),
         ("numpy", "numpy", ("numpy",)), ("pillow", "PIL", ("pillow",)),
         ("clip4clip_dali", "clip4clip_dali", ("clip4clip-dali",))]


def _version(module: str, dists: tuple[str, ...]) -> str:
    import importlib.metadata as md
    import sys

    if module not in sys.modules:
        for d in dists:
            try:
                return md.version(d)
            except md.PackageNotFoundError:
                pass
    try:
        return str(getattr(__import__(module, fromlist=["_"]), "__version__", "installed"))
    except Exception as e:
        return f"n/a ({type(e).__name__})"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for key, module, dists in _LIBS:
        out[key] = _version(module, dists)
    try:
        import torch

        out["cuda"] = torch.version.cuda
    except Exception:
        pass
    return out


def gpu_info() -> dict | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        p = torch.cuda.get_device_properties(0)
        return {"name": p.name, "count": torch.cuda.device_count(),
                "memory_gib": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}
    except Exception as e:
        return {"name": f"n/a ({short_error(e)})"}


def peak_tflops(gpu: dict | None, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"--peak-tflops {override}"
    if not gpu:
        return None, "CPU: no stated peak, MFU n/a"
    name = gpu.get("name", "")
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value, f"{key} dense bf16 data-sheet peak"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def machine_name(gpu: dict | None) -> str:
    date = _dt.date.today().isoformat()
    if gpu and "n/a" not in gpu.get("name", "n/a"):
        slug = gpu["name"].lower().replace("nvidia", "").strip().split()
        return f"gpu-{'-'.join(slug[:2]) or 'cuda'}-{date}"
    return f"cpu-{usable_cores()}core-{date}"


def merge_section(into: dict, name: str, sec: dict, tables=("datasets",)) -> None:
    """Fold section ``name`` of one result file (``sec``) into ``into``: the first file's
    config, the union of its ``tables`` (dicts by data set), and every row."""
    dst = into.setdefault(name, {"config": sec["config"], "rows": []})
    for key in tables:
        dst.setdefault(key, {}).update(sec.get(key, {}))
    dst["rows"] += sec["rows"]
