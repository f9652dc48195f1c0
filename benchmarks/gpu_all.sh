#!/usr/bin/env bash
# Every GPU check in one bounded run, under 8 minutes on one H100/H200. From the repository root:
#
#   OUT=/dir bash benchmarks/gpu_all.sh                # on the GPU machine
#   OUT=/dir bash benchmarks/gpu_all.sh --device cpu   # dry run: tiny sizes, CPU, one process
#
# Stages, each under its own timeout (T_* seconds), each writing as it goes; a merged report
# $OUT/<gpu>-<date>.{json,md,png} with the targets block at the end:
#   0. tests:    every GPU test (pytest -m gpu; on the CPU they are skipped with their reason).
#   1. data:     drawn 320x240 29.97 fps clips (VP9 and H.264), prepared by
#                pipelines/prepare_msvd.py at 3 fps (298x224) and pre-sampled (224x224); cached.
#   2. nvdec:    steady NVDEC frames/s, 3 fps vs pre-sampled, VP9 and H.264, K = 1/2/4 DALI
#                pipelines (data.dali_pipelines); the frame cache serving batches on the GPU.
#   3. widths:   NVDEC on 3 fps clips drawn 298x224 against 304x224 (298 is not a multiple of
#                16, 304 is), VP9 and H.264, K = 1 and 4 (one run, the four sets in it).
#   4. cpudec:   DALI's CPU decoder with $CPU_THREADS threads feeding the GPU (dali_hybrid), and
#                DALI CPU, on 3 fps and pre-sampled VP9.
#   5. step:     ViT-B/32 meanP 128 x 12: compiled amp_bf16 (model only), and
#                compiled fed by the frame cache and by NVDEC on pre-sampled clips (data wait).
#   6. train:    a short real training run (section train: python -m clip4clip_dali.train,
#                frame cache, pre-sampled clips, train.compile=auto), its data-wait share.
#   7. decoders: torchcodec CUDA, PyNvVideoCodec and DALI NVDEC (last: DALI users report hangs
#                on AVI), 1/4/8/16 threads, on the 12 real MSVD clips pre-sampled, 3 fps and
#                raw (H.264 AVI), 31 clips a pass; rows are kept as they finish, and 25 s may
#                not reach them all (raise T_DECODERS for that; the 8-minute bound leaves 25 s)
#                (section decoders; its CPU rows: benchmarks/results/cpu-2core-*-decoders.md).
#                PyNvVideoCodec comes from $PEER_WHEELS (wheels carried to the machine) if set,
#                else its rows say "not installed". Dry run: the drawn H.264 set of stage 1.
#   8. shards:   NVDEC after tar shards (pipelines/make_shards.py, read by offset) against the
#                same pre-sampled VP9 clips one file each, K = 1 and the largest, and DALI CPU;
#                interleaved (the shards packed from stage 1's pre-sampled clips, cached).
# Needs on the GPU machine: torch (CUDA), nvidia-dali-cuda130, av, open_clip_torch, ftfy, pytest
# (../shared/device/README.md: how DALI gets there). Nothing is downloaded.
# Loader rows count as throughput only with >= MIN_BATCHES batches a pass after the first.
# The dry run checks every stage's command with the least work: it queues the stages and runs
# them in one process (benchmarks/run_queued.py: one start-up of torch and DALI, not one a stage),
# times one pass a window, and runs only the test files that hold GPU tests. On the GPU every
# stage is a process of its own under its own timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    *) echo "usage: bash benchmarks/gpu_all.sh [--device cuda|cpu]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DEVICE" = cpu ]; then  # dry run: every stage, tiny sizes
  RES=${OUT:-/tmp/clip4clip-gpu-all-dry}
  : "${VIDEOS:=6}" "${BATCH:=1}" "${MIN_BATCHES:=4}" "${FRAMES:=4}" "${RES_PX:=32}" \
    "${STEP_BATCH:=4}" "${CPU_THREADS:=2}" "${TRAIN_STEPS:=4}" \
    "${STEP_WARMUP:=1}" "${STEP_ITERS:=2}" "${MIN_REPEAT_S:=0}"
  TESTS=$(grep -l "mark\.gpu" tests/test_*.py | tr '\n' ' ')
  SIZE_A=96x72; SIZE_298=90x64; SIZE_304=96x64; SECONDS_RANGE="2 4"; WORKERS=2; KS=1,2
  STEP_MODEL="--tiny"; VARIANT=eager_fp32  # compiling takes minutes on a CPU
  NAME=${NAME:-dry-run-cpu}
else
  RES=${OUT:-benchmarks/results/gpu}
  : "${VIDEOS:=256}" "${BATCH:=8}" "${MIN_BATCHES:=30}" "${FRAMES:=12}" "${RES_PX:=224}" \
    "${STEP_BATCH:=128}" "${CPU_THREADS:=16}" "${TRAIN_STEPS:=40}" \
    "${STEP_WARMUP:=3}" "${STEP_ITERS:=8}" "${MIN_REPEAT_S:=0.5}"
  TESTS=tests
  SIZE_A=320x240; SIZE_298=298x224; SIZE_304=304x224; SECONDS_RANGE="3 8"; WORKERS=8; KS=1,2,4
  STEP_MODEL="--model ViT-B-32 --sim-header meanP"; VARIANT=compiled_amp_bf16
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | sed 's/nvidia-//; s/[^a-z0-9-]//g')
  NAME=${NAME:-gpu-${GPU:-cuda}-$(date -u +%Y-%m-%d)}
fi
export CLIP4CLIP_BENCH_CACHE=${CLIP4CLIP_BENCH_CACHE:-/tmp/clip4clip-bench}
mkdir -p "$RES"
BENCH="$PY benchmarks/throughput.py --device $DEVICE --out $RES --videos $VIDEOS --max-frames $FRAMES \
  --resolution $RES_PX --clip-seconds $SECONDS_RANGE --loader-batch $BATCH --min-batches $MIN_BATCHES \
  --repeats 2 --min-repeat-seconds $MIN_REPEAT_S --loader-budget ${T_ROW:-6}"
status=0
t0=$(date +%s)
parts=()
queued=()
QUEUE="$RES/$NAME.queue"
rm -f "$QUEUE"
stage() {  # stage NAME TIMEOUT CMD...: run under a timeout, log, keep the status
  local name=$1 limit=$2; shift 2
  if [ "$DEVICE" = cpu ]; then  # dry run: queued for one process, run after the last stage
    printf '%s\0' "$name" "$#" "$@" >> "$QUEUE"; queued+=("$name")
    return 0
  fi
  echo "== $name ($(( $(date +%s) - t0 )) s)"
  timeout -k 5 "$limit" "$@" > "$RES/$NAME-$name.log" 2>&1
  finish "$name" $?
}
finish() {  # finish NAME RC: the stage's log lines, its status, its part of the merged report
  local name=$1 rc=$2
  grep -E "^\[bench|passed|failed|skipped|error|Error|data wait" "$RES/$NAME-$name.log" | tail -40
  echo "$name exit $rc"; [ "$rc" = 0 ] || status=1
  [ -f "$RES/$NAME-$name.json" ] && parts+=("$RES/$NAME-$name.json")
  return 0
}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
  uptime; } > "$RES/env.txt"; cat "$RES/env.txt"

stage tests "${T_TESTS:-70}" $PY -m pytest -m gpu -q -rs -p no:cacheprovider $TESTS \
  --junitxml="$RES/$NAME-gpu_tests.xml"

# Builds (and caches) the sets stages 2, 4, 5 and 6 read; --loaders "" measures nothing.
stage data "${T_DATA:-70}" $BENCH --name "$NAME-data" --sections loader --loaders "" \
  --codecs vp9,h264 --clip-size $SIZE_A --prepare 3fps,presampled --workers $WORKERS

stage nvdec "${T_NVDEC:-85}" $BENCH --name "$NAME-nvdec" --sections loader --codecs vp9,h264 \
  --clip-size $SIZE_A --prepare presampled,3fps --loaders dali_gpu,cache --dali-pipelines $KS \
  --workers $WORKERS

# Like with like: clips drawn at 3 fps (keyframe each second) at each width, VP9 and H.264.
stage widths "${T_WIDTHS:-35}" $BENCH --name "$NAME-widths" --sections loader --codecs vp9,h264 \
  --clip-size "$SIZE_298,$SIZE_304" --clip-fps 3 --gop 3 --loaders dali_gpu \
  --dali-pipelines 1,${KS##*,} --workers $WORKERS

stage cpudec "${T_CPUDEC:-25}" $BENCH --name "$NAME-cpudec" --sections loader --codecs vp9 \
  --clip-size $SIZE_A --prepare 3fps,presampled --loaders dali_hybrid,dali_cpu \
  --workers "$CPU_THREADS"

# The e2e rows read the first set: pre-sampled VP9 ($SIZE_A source).
stage step "${T_STEP:-85}" $BENCH --name "$NAME-step" --sections step --codecs vp9 \
  --clip-size $SIZE_A --prepare presampled $STEP_MODEL --step-batch "$STEP_BATCH" --ckpt off \
  --variants $VARIANT --e2e-variants $VARIANT \
  --e2e-loaders cache,dali_gpu --workers $WORKERS --step-warmup "$STEP_WARMUP" --step-iters "$STEP_ITERS" --step-budget 20

stage train "${T_TRAIN:-55}" $BENCH --name "$NAME-train" --sections train --codecs vp9 \
  --clip-size $SIZE_A --prepare presampled $STEP_MODEL --step-batch "$STEP_BATCH" \
  --train-steps "$TRAIN_STEPS" --train-timeout "$(( ${T_TRAIN:-55} - 10 ))" --workers $WORKERS

if [ "$DEVICE" = cpu ] || [ ! -d "${REALDATA:-../shared/realdata}/mini_msvd/MSVD_Videos" ]; then
  DEC_DATA="--codecs h264 --clip-size $SIZE_A"
else
  MSVD=${REALDATA:-../shared/realdata}/mini_msvd
  DEC_DATA="--data-path $MSVD/msvd_data --features-path $MSVD/MSVD_Videos --label msvd12"
fi
[ -n "${PEER_WHEELS:-}" ] && $PY -m pip install -q --no-index --find-links "$PEER_WHEELS" PyNvVideoCodec
stage decoders "${T_DECODERS:-25}" $BENCH --name "$NAME-decoders" --sections decoders $DEC_DATA \
  --prepare presampled,3fps,raw --decoders torchcodec_cuda,pynvc,dali_nvdec \
  --decoder-gpu-threads 1,4,8,16 --decoder-batch 1 --decoder-min-batches "$MIN_BATCHES" \
  --decoder-repeats 1 --decoder-budget 1 --workers $WORKERS

# The tar shard rows; the shards are written here from stage 1's pre-sampled clips (cached).
stage shards "${T_SHARDS:-30}" $BENCH --name "$NAME-shards" --sections loader --codecs vp9 \
  --clip-size $SIZE_A --prepare presampled,shards --loaders dali_gpu,dali_cpu \
  --dali-pipelines 1,${KS##*,} --interleave --workers $WORKERS

if [ "$DEVICE" = cpu ]; then  # the queued stages, in one process; each its .log and .rc
  echo "== ${#queued[@]} stages in one process ($(( $(date +%s) - t0 )) s)"
  $PY benchmarks/run_queued.py "$QUEUE" "$RES/$NAME-" || status=1
  for name in "${queued[@]}"; do
    finish "$name" "$(cat "$RES/$NAME-$name.rc" 2>/dev/null || echo missing)"
  done
fi
$PY benchmarks/throughput.py --merge "${parts[@]}" --out "$RES" --name "$NAME" > /dev/null 2>&1 \
  || status=1
echo "== done in $(( $(date +%s) - t0 )) s (status $status): $RES/$NAME.md"
exit $status
