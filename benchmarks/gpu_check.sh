#!/usr/bin/env bash
# GPU check for the DALI loader (NVDEC): run on a machine with CUDA, from the repository root.
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (if set) else benchmarks/results/gpu_check
#
# Needs: torch with CUDA, nvidia-dali-cuda130, PyAV (av), open_clip_torch, ftfy, pytest.
# 1. The GPU tests (pytest -m gpu): they generate their own clips with PyAV (H.264 in MP4 and in
#    AVI, VP9/WebM, MPEG-4 Part 2/AVI, MJPEG/AVI; odd sizes, portrait, 29.97 fps) and compare DALI
#    on the GPU with the reference loader (mean abs difference < 2.5/255, masks equal), check a
#    broken video is skipped with a warning on the GPU too, and that build_loader(auto) takes NVDEC
#    for H.264.
# 2. The CPU DALI tests again (cheap; proves the same tree is sane there).
# 3. The loader benchmark (benchmarks/throughput.py --sections loader), bounded in time.
# Everything ends within about 5 minutes; each step has its own timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
RES=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
{
  echo "== machine"; date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
  python3 - <<'PY'
import importlib
for m in ("torch", "nvidia.dali", "av", "open_clip", "numpy"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "MISSING", e)
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
} 2>&1 | tee "$RES/env.txt"

echo "== GPU tests"
timeout 240 python3 -m pytest -m gpu -v -rs -p no:cacheprovider tests/test_dali_loader.py tests/test_frame_cache.py \
  --junitxml="$RES/gpu_tests.xml" 2>&1 | tee "$RES/gpu_tests.log"
rc=${PIPESTATUS[0]}; echo "gpu tests exit $rc"; [ "$rc" = 0 ] || status=1

echo "== CPU DALI tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m "not gpu" tests/test_dali_loader.py \
  tests/test_loader.py 2>&1 | tail -5 | tee "$RES/cpu_tests.log"
rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || status=1

echo "== loader benchmark"
if [ -f benchmarks/throughput.py ]; then
  timeout ${BENCH_TIMEOUT:-150} python3 benchmarks/throughput.py --sections loader --device cuda \
    --codecs vp9,h264 --videos 16 --clip-size 320x240 --loaders dali_gpu,dali_hybrid,dali_cpu,reference \
    --workers 4 --loader-batch 16 --repeats 2 --min-repeat-seconds 1 --loader-budget 25 \
    --out "$RES" --name loader_gpu 2>&1 | tail -40 | tee "$RES/bench.log"
  rc=${PIPESTATUS[0]}; echo "benchmark exit $rc"; [ "$rc" = 0 ] || status=1
else
  echo "benchmarks/throughput.py not found; skipped"
fi
echo "== done (status $status); results in $RES"
exit $status
