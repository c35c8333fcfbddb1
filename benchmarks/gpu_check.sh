#!/usr/bin/env bash
# GPU check of cmbunet, ready to run on a CUDA machine (it has not been run on a GPU yet):
#   1. one tiny training fold on the GPU (mixed precision), timed per stage;
#   2. the same fold with DistributedDataParallel over every GPU, started by torchrun;
#   3. prediction of the test cases on the GPU (fp16 autocast screening) and on the CPU (float32), per-stage
#      times of both, and whether the two found the same CMBs.
# Without a GPU (or with --cpu) every step runs on the CPU instead (DDP: 2 gloo processes), which checks the
# script itself; its times then mean nothing.
#
#   benchmarks/gpu_check.sh [--cpu] [WORKDIR]        # PYTHON=... to choose the interpreter
set -euo pipefail

FORCE_CPU=0
if [[ "${1:-}" == "--cpu" ]]; then FORCE_CPU=1; shift; fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
WORK="${1:-$(mktemp -d -t cmbunet_gpu_check_XXXX)}"
mkdir -p "$WORK"
export CMBUNET_RAW="$WORK/raw" CMBUNET_PREPROCESSED="$WORK/preprocessed" CMBUNET_RESULTS="$WORK/results"
DATASET=Dataset951_GpuCheck

"$PY" "$HERE/gpu_check.py" devices
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [[ $FORCE_CPU == 1 || $NGPU == 0 ]]; then
  DEVICE=cpu; NPROC=2
  echo "# no GPU used: every step runs on the CPU (checks the script; times mean nothing)"
else
  DEVICE=cuda; NPROC=$NGPU
fi
echo "# device $DEVICE, $NPROC DDP process(es), work folder $WORK"

# tiny schedule of the test suite (tests/tiny_schedule.py), with a screening stage long enough to learn
OVERRIDES=$("$PY" -c "import sys; sys.path.insert(0, '$HERE/../tests'); from tiny_schedule import TINY_TRAINING_OVERRIDES as o; print(' '.join(o))")
OVERRIDES="$OVERRIDES training.cpu.screening.epochs=8 training.cpu.screening.samples_per_epoch=256"
OVERRIDES="$OVERRIDES ${OVERRIDES//training.cpu./training.gpu.}"  # the same schedule on the GPU

timed() {  # timed LABEL CMD...: run, print the wall time
  local label=$1; shift
  local t0; t0=$(date +%s%N)
  "$@"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "# $label: $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
}

if [[ ! -d "$CMBUNET_RAW/$DATASET" ]]; then
  "$PY" -m cmbunet.synthetic.cli -o "$CMBUNET_RAW" --dataset-id 951 --name GpuCheck --cases 10 --test-cases 4 \
    --size small --seed 3 > "$WORK/synthetic.log"
  # shellcheck disable=SC2086
  "$PY" -m cmbunet.plan_and_preprocess -d 951 --preset tiny -np 2 --override $OVERRIDES > "$WORK/plan.log"
fi

# 1. one fold on the device (fp16 autocast on CUDA)
timed "training fold 0 on $DEVICE" "$PY" -c "from cmbunet.training.cli import main; raise SystemExit(main())" \
  "$DATASET" 0 -device "$DEVICE" --seed 0 --num-workers 1 > "$WORK/train_single.log" 2>&1
grep -h "finished" "$WORK/train_single.log" || true

# 2. the same fold with DDP over every GPU, started by torchrun (its own results folder)
cat > "$WORK/train_entry.py" <<'EOF'
from cmbunet.training.cli import main
raise SystemExit(main())
EOF
timed "training fold 0, DDP over $NPROC process(es) (torchrun)" \
  "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "$WORK/train_entry.py" \
  "$DATASET" 0 -device "$DEVICE" --seed 0 --num-workers 1 --results-root "$WORK/results_ddp" > "$WORK/train_ddp.log" 2>&1
grep -h "finished" "$WORK/train_ddp.log" || true

# 3. prediction on the device (auto precision: fp16 screening on CUDA) and on the CPU in float32
TEST="$CMBUNET_RAW/$DATASET/imagesTs"
timed "prediction on $DEVICE" "$PY" -m cmbunet.inference.cli -i "$TEST" -o "$WORK/pred_$DEVICE" -d 951 -f 0 \
  -device "$DEVICE" --overwrite
timed "prediction on cpu, fp32" "$PY" -m cmbunet.inference.cli -i "$TEST" -o "$WORK/pred_cpu_fp32" -d 951 -f 0 \
  -device cpu --precision fp32 --overwrite
"$PY" "$HERE/gpu_check.py" compare "$WORK/pred_cpu_fp32" "$WORK/pred_$DEVICE" --names cpu-fp32 "$DEVICE"
