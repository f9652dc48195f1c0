#!/usr/bin/env bash
# Every GPU check in one bounded run (~5 minutes on an H100/H200), for a lent machine with a
# short time budget. From the repository root:   OUT=/dir bash benchmarks/gpu_all.sh
#   1. GPU tests: DALI (NVDEC) against the reference loader; model GPU-only tests (fp16 modes).
#   2. Loader benchmark on 3 fps 224p clips (VP9 and H.264): DALI-GPU, DALI CPU decode + GPU
#      resize, DALI-CPU, reference, original; then the DALI graph cut after each stage
#      (benchmarks/dali_stages.py) with NVDEC and with the CPU decoder, to see where time goes.
#   3. Step benchmark, ViT-B/32 meanP batch 128 x 12: eager fp32, eager amp_bf16, compiled
#      amp_bf16 (model only), and compiled amp_bf16 fed by DALI-GPU (end to end).
# benchmarks/gpu_suite.sh is the longer, complete version (with/without checkpointing).
set -uo pipefail
cd "$(dirname "$0")/.."
RES=${OUT:-benchmarks/results/gpu}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CLIP4CLIP_BENCH_CACHE=${CLIP4CLIP_BENCH_CACHE:-/tmp/clip4clip-bench}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | sed 's/nvidia-//; s/[^a-z0-9-]//g')
NAME=${NAME:-gpu-${GPU:-cuda}-$(date -u +%Y-%m-%d)}
BENCH="python3 benchmarks/throughput.py --device cuda --out $RES"
DATA="--clip-size 298x224 --clip-fps 3 --gop 3 --clip-seconds 2 20 --videos ${VIDEOS:-96} --max-frames 12"
status=0
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$RES/env.txt"

echo "== 1/3 GPU tests ($(( $(date +%s) - t0 )) s)"
timeout -k 5 "${T_TESTS:-100}" python3 -m pytest -m gpu -q -rs -p no:cacheprovider \
  tests/test_dali_loader.py tests/test_frame_cache.py tests/test_model.py tests/test_search.py --junitxml="$RES/gpu_tests.xml" 2>&1 \
  | tail -25 | tee "$RES/gpu_tests.log"
rc=${PIPESTATUS[0]}; echo "gpu tests exit $rc"; [ "$rc" = 0 ] || status=1

echo "== 2/3 loader ($(( $(date +%s) - t0 )) s)"
timeout -k 5 "${T_LOADER:-80}" $BENCH --name "$NAME-loader" --sections loader $DATA \
  --codecs vp9,h264 --loaders dali_gpu,dali_hybrid,dali_cpu,reference,cache,original --workers 8 \
  --loader-batch 64 --repeats 2 --min-repeat-seconds 1 --loader-budget 8 \
  > "$RES/$NAME-loader.log" 2>&1
rc=$?; tail -30 "$RES/$NAME-loader.log"; echo "loader exit $rc"; [ "$rc" = 0 ] || status=1

echo "== 2b/3 DALI graph stages, NVDEC and CPU decoder ($(( $(date +%s) - t0 )) s)"
SET=$(ls -d "$CLIP4CLIP_BENCH_CACHE"/vp9-"${VIDEOS:-96}"v-298x224-3fps-* 2>/dev/null | head -1)
for dec in nvdec cpu; do
  [ -n "$SET" ] && timeout -k 5 "${T_STAGES:-30}" python3 benchmarks/dali_stages.py \
    --features-path "$SET/videos" --device cuda --decoder "$dec" --threads 8 --batch 64 \
    --seconds 2 --out "$RES/$NAME-stages-$dec.json" 2>&1 | grep -v "^\[" | tail -8
done

echo "== 3/3 step ($(( $(date +%s) - t0 )) s)"
timeout -k 5 "${T_STEP:-170}" $BENCH --name "$NAME-step" --sections step $DATA --codecs vp9 \
  --model ViT-B-32 --sim-header meanP --step-batch 128 --ckpt "${CKPT:-off}" --workers 8 \
  --e2e-variants compiled_amp_bf16 --e2e-loaders dali_gpu,dali_hybrid,cache --step-warmup 3 --step-iters 8 \
  --step-budget 15 > "$RES/$NAME-step.log" 2>&1
rc=$?; tail -30 "$RES/$NAME-step.log"; echo "step exit $rc"; [ "$rc" = 0 ] || status=1

python3 benchmarks/throughput.py --merge "$RES/$NAME-loader.json" "$RES/$NAME-step.json" \
  --out "$RES" --name "$NAME" >/dev/null 2>&1 || status=1
echo "== done in $(( $(date +%s) - t0 )) s (status $status)"
exit $status
