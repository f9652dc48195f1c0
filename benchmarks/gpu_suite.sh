#!/usr/bin/env bash
# The full GPU benchmark suite, in about 5 minutes on one H100/H200. From the repository root:
#
#   OUT=/some/dir bash benchmarks/gpu_suite.sh      # results in $OUT (default benchmarks/results)
#
# Needs on that machine: torch with CUDA, nvidia-dali-cuda130, av (PyAV), open_clip_torch, ftfy,
# opencv-python-headless (for the original-style row; without it that row is n/a), matplotlib
# (optional, for the PNG). Nothing is downloaded: the clips are drawn and encoded on the spot.
#
# Two runs of benchmarks/throughput.py, each under its own timeout, each writing its JSON and
# markdown after every row (a run cut short still leaves what it measured), then one merged
# report <name>.json/.md/.png with the targets block:
#   1. loader: 3 fps clips with short side 224 (298x224, one keyframe a second: what
#      pipelines/prepare_msvd.py makes), VP9 and H.264, DALI-GPU / DALI-CPU / reference PyAV
#      DataLoader / original CLIP4Clip way (OpenCV), all with $WORKERS workers (= DALI threads);
#   2. step: ViT-B/32 meanP, batch 128 x 12 frames at 224, random init; model only: eager fp32,
#      eager amp_bf16, compiled amp_bf16, each with and without gradient checkpointing; end to
#      end: compiled amp_bf16 fed by DALI-GPU and by the reference loader (VP9 set).
# Knobs (environment): WORKERS (8), VIDEOS (600), BATCH (128), FRAMES (12), MODEL (ViT-B-32),
# SIM_HEADER (meanP), T_LOADER (150 s), T_STEP (300 s), PYTHON (python3); DEVICE (cuda) and
# EXTRA (more flags for both runs) exist for a dry run elsewhere.
set -uo pipefail
cd "$(dirname "$0")/.."
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CLIP4CLIP_BENCH_CACHE=${CLIP4CLIP_BENCH_CACHE:-/tmp/clip4clip-bench}
WORKERS=${WORKERS:-8}
VIDEOS=${VIDEOS:-600}
BATCH=${BATCH:-128}
FRAMES=${FRAMES:-12}
MODEL=${MODEL:-ViT-B-32}
SIM_HEADER=${SIM_HEADER:-meanP}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | sed 's/nvidia-//; s/[^a-z0-9-]//g')
NAME=${NAME:-gpu-${GPU:-cuda}-$(date -u +%Y-%m-%d)}
BENCH="$PY benchmarks/throughput.py --device ${DEVICE:-cuda} --out $RES ${EXTRA:-}"
DATA="--clip-size 298x224 --clip-fps 3 --gop 3 --clip-seconds 2 20 --videos $VIDEOS --max-frames $FRAMES"
status=0
t0=$(date +%s)

echo "== 1/2 loader ($(date -u +%T))"
timeout -k 10 "${T_LOADER:-150}" $BENCH --name "$NAME-loader" --sections loader $DATA \
  --codecs vp9,h264 --loaders dali_gpu,dali_hybrid,dali_cpu,reference,cache,original --workers "$WORKERS" \
  --loader-batch 16 --repeats 3 --min-repeat-seconds 1 --loader-budget 12 \
  2>&1 | tee "$RES/$NAME-loader.log" | grep --line-buffered -E "^\[bench|Error|error"
rc=${PIPESTATUS[0]}; echo "loader exit $rc"; [ "$rc" = 0 ] || status=1

echo "== 2/2 step: model only, then end to end ($(date -u +%T))"
# One process, so the end-to-end rows reuse the compiled graph of the model-only row.
timeout -k 10 "${T_STEP:-300}" $BENCH --name "$NAME-step" --sections step $DATA \
  --codecs vp9 --model "$MODEL" --sim-header "$SIM_HEADER" --step-batch "$BATCH" \
  --e2e-variants compiled_amp_bf16 --e2e-loaders dali_gpu,dali_hybrid,cache,reference --workers "$WORKERS" \
  --step-warmup 3 --step-iters 8 --step-budget 30 \
  2>&1 | tee "$RES/$NAME-step.log" | grep --line-buffered -E "^\[bench|Error|error"
rc=${PIPESTATUS[0]}; echo "step exit $rc"; [ "$rc" = 0 ] || status=1

echo "== merge ($(date -u +%T))"
$PY benchmarks/throughput.py --merge "$RES/$NAME-loader.json" "$RES/$NAME-step.json" \
  --out "$RES" --name "$NAME" || status=1
echo "== done in $(( $(date +%s) - t0 )) s (status $status): $RES/$NAME.md"
exit $status
