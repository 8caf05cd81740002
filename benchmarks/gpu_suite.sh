#!/usr/bin/env bash
# GPU suite (issues 7, 8 and 16): one call, <= 8 minutes on one H200 (the time caps below sum to 450 s).
#
#   bash benchmarks/gpu_suite.sh [output file]      # default: gpu_suite_<date>.txt in the current directory
#   bash benchmarks/gpu_suite.sh [output file] batched   # only part 7 (its own call, <= 8 minutes too)
#
# 1. hardware (nvidia-smi) and software versions;
# 2. optimizer step time at 100M and 1B params, float32 and bfloat16, every Adam variant vs torch's fused AdamW,
#    with the fraction of the HBM streaming bandwidth measured in the same run (includes the compiled AdamP and
#    cautious AdamW paths and their eager fallbacks; "first ms" is the compile);
# 3. memory: optimizer state and step temporaries per parameter vs torch AdamW (100M params, float32 and bfloat16);
# 3b. every scalar rule on torchao's 8-bit and 4-bit AdamW (and bitsandbytes' where installed): state bytes per
#    parameter, step time vs the bare kernel and torch's fused float32 AdamW (100M params);
# 4. end to end: ResNet20 (no BN) images/s, plain torch loop vs Lightning with every variant and the monitors;
# 5. ResNet20 epoch time (390 steps of 128 = one CIFAR-10 epoch) for adamw and adamp;
# 6. the mixed-precision tests (bf16-mixed, 16-mixed with GradScaler, clipping) on CUDA;
# 7. (part "batched", issue 27) sweep cells per hour on the GPU, one process per cell vs 24 cells per process: the
#    blog's 24-cell grid (configs/blog/adamw-vs-adamp.yaml) x seeds 0-2 = 72 cells, 156 steps each (2 epochs of
#    the 10,000 training images), the one-process-per-cell way on its first 8 cells; the data is the CIFAR-10
#    archive at ../shared/data when present, else the package's 10,000-image sample; then the lever the sweep
#    does not use yet: 24 ResNet20s trained as one vmapped ensemble vs one after another (benchmarks/ensemble_step.py),
#    with the GPU-hours the full target (72 cells x 100 epochs x 50,000 images) takes at each way's rate.
# Paste the output into docs/performance.md with the date and the hardware.
set -euo pipefail

cd "$(dirname "$0")/.."
LOG="${1:-gpu_suite_$(date +%Y%m%d_%H%M%S).txt}"
PART="${2:-main}"
DATA=../shared/data/cifar10-jpeg.tar.gz
[ -f "$DATA" ] || DATA=sample
# The Adam variants, from the registry.
read -r -a ADAM <<< "$(python -c "from lightning_decay.optim.registry import variant_names; print(*variant_names('adam'))")"
export PYTHONUNBUFFERED=1

section() { printf '\n===== %s (%s) =====\n' "$1" "$(date -u +%H:%M:%S)"; }
# capped SECONDS COMMAND...: run with a time cap; a failure or timeout is reported and the suite goes on.
capped() {
  local cap="$1"; shift
  local code=0
  timeout "$cap" "$@" || code=$?
  if [ "$code" -eq 124 ]; then echo "[FAILED: time cap of ${cap}s reached]"
  elif [ "$code" -ne 0 ]; then echo "[FAILED: exit $code]"; fi
  return 0
}

{
  section "hardware"
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory,power.limit --format=csv
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'lightning', lightning.__version__, torch.cuda.get_device_name(0))"

  if [ "$PART" = main ]; then
  section "step time vs torch fused AdamW and the HBM floor: 100M and 1B params, float32 and bfloat16"
  capped 150 python3 benchmarks/optimizer_step.py --device cuda --table --sizes 1e8 1e9 \
    --dtype float32 bfloat16 --variants "${ADAM[@]}" --rounds 5 --steps 10 --warmup 2

  section "memory: state and step temporaries per parameter (100M params)"
  capped 60 python3 benchmarks/optimizer_step.py --device cuda --memory-only --sizes 1e8 \
    --dtype float32 bfloat16 --variants "${ADAM[@]}"

  section "rules on low-bit AdamW kernels: state bytes and step time vs the bare kernel (100M params)"
  capped 60 python3 benchmarks/optimizer_step.py --device cuda --kernels --kernel-filter 8bit 4bit \
    --sizes 1e8 --tensors 10 --rounds 2 --steps 5

  section "end to end: ResNet20 (no BN) images/s, batch 128"
  capped 70 python3 benchmarks/train_throughput.py --device cuda --batch-size 128 --steps 100 --warmup 20 \
    --rounds 1

  section "Muon rules vs bare torch.optim.Muon: 24 matrices 1024 x 1024"
  capped 20 python3 benchmarks/optimizer_step.py --device cuda --muon --muon-shape 1024 1024 --muon-matrices 24 \
    --rounds 3 --steps 5

  section "ResNet20 (no BN) epoch time: 390 steps of 128 images"
  capped 40 python3 benchmarks/train_throughput.py --device cuda --batch-size 128 --steps 390 --warmup 20 \
    --rounds 1 --variants adamw adamp

  section "mixed precision on CUDA: tests/test_precision.py"
  capped 50 python3 -m pytest -q -p no:cacheprovider tests/test_precision.py -k cuda
  fi

  if [ "$PART" = batched ]; then  # part: batched (its caps are counted apart from the main part's)
  section "sweep cells per hour: one process per cell vs 24 cells per process (blog grid x 3 seeds, 72 cells)"
  capped 360 python3 benchmarks/batched_cells.py --grid configs/blog/adamw-vs-adamp.yaml --seeds 0 1 2 \
    --cells 72 --baseline-cells 8 --jobs 1 --batch-cells 24 --max-steps 156 --data-dir "$DATA"
  section "a vmapped ensemble of the blog grid's 24 ResNet20s (no BN) vs the 24 models one after another, per step"
  capped 60 python3 benchmarks/ensemble_step.py --device cuda --copies 24 --batch 128 --steps 20 --warmup 3
  fi

  section "done"
} 2>&1 | tee "$LOG"
echo "output saved to $LOG"
if grep -q '^\[FAILED' "$LOG"; then exit 1; fi
