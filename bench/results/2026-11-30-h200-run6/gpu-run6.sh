#!/usr/bin/env bash
# Run 6 (2026-11-30): the whole-sector copy change in the wgmma halo kernels, and why VGG-16
# training on the wgmma convs lowered its loss less than on Auto's at batch 64 in run 5.
# run: bash scripts/gpu-run6.sh   carry: ["target/release/vgg"]   timeout_s: ~400
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SKIP=torch-version,info,bench-conv-wgmma-flat,bench-gemm,bench-gemm-wgmma,bench-train-profile,bench-train-wgmma,cpu,bench-data,\
bench-train-graph,torch-conv,bench-conv-f4,bench-conv-flat,train-vgg16,prep-shards,bench-shards,\
ncu-igemm3x3_wgmma_n256_f16,ncu-wino2x2_fprop_f16,ncu-wino2x2_dgrad_f16,ncu-wino4x4_fprop_f16,ncu-igemm3x3_wgrad_m128n256_f16,\
bench-train-queued,bench-train-32px-one-by-one,bench-train-32px-queued,bench-train-32px-graph,eval-vgg16-ckpt,eval-vgg16-center,\
eval-vgg16-dense,sanitizer \
BUDGET=${BUDGET:-230} bash scripts/gpu-check.sh
# The training-loss question (log only): last loss after 5 + 20 steps per conv choice and batch;
# twice for wgmma at batch 64 (a race would show as two different losses: every kernel is
# deterministic by design).
VGG=target/release/vgg
LOG="$OUT/diag.log"
for spec in "auto 64" "wgmma 64" "wgmma 64" "winograd2x2 64" "wgmma 32" "auto 32" "wgmma 128"; do
  set -- $spec
  echo "=== bench train --conv-algo $1 --batch $2" | tee -a "$LOG"
  timeout 40 "$VGG" bench train --device cuda --model D --batch "$2" --warmup 5 --steps 20 --conv-algo "$1" 2>&1 \
    | grep -E "^D |error" | tee -a "$LOG"
done
echo "=== racecheck conv_wgmma" | tee -a "$LOG"
timeout 60 compute-sanitizer --tool racecheck --error-exitcode 3 "$VGG" selftest --device cuda --only conv_wgmma 2>&1 \
  | tail -n 4 | tee -a "$LOG"
