#!/usr/bin/env bash
# The one command a GPU session runs on the lent H200 (see ../shared/GPU.md):
#   run: bash scripts/gpu-check.sh   carry: ["target/release/vgg"]   timeout_s: ~420
# Everything goes under $OUT (default ./gpu-out): one log, gpu-check.log, and results.tgz with
# the JSON and PNG files of the steps (the device tool returns at most 8 files; the archive is
# written on exit, whatever happened before). The last lines printed are a short summary.
# Each step has its own time limit and the script goes on past a failing step, so one
# broken piece never costs the whole run.
set -u
OUT=${OUT:-gpu-out}
RAW="$OUT/raw"
mkdir -p "$RAW"
trap 'tar -czf "$OUT/results.tgz" -C "$RAW" . && rm -rf "$RAW"' EXIT
VGG=${VGG:-target/release/vgg}
BATCH=${BATCH:-64}
summary=()
LOG="$OUT/gpu-check.log"
# SKIP: comma-separated step names to leave out (a rerun measuring only what changed).
SKIP=",${SKIP:-},"
# BUDGET: seconds for all the steps; each step's limit is cut to what is left, and a step with
# under 15 s left is skipped, so the script ends (and writes results.tgz) within the device
# tool's timeout (run it with timeout_s >= BUDGET + 60). Steps run in order of importance.
BUDGET=${BUDGET:-350}
T0=$(date +%s)
last_rc=0
step() { # step NAME LIMIT_S CMD...: runs CMD with a time limit, appends its output to the log
  local name=$1 limit=$2; shift 2
  case "$SKIP" in *",$name,"*) echo "=== $name: skipped" | tee -a "$LOG"; last_rc=skipped; return 0 ;; esac
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt 15 ]; then
    echo "=== $name: skipped (time budget spent)" | tee -a "$LOG"
    summary+=("$(printf '%-22s %s' "$name" "skipped: budget")")
    last_rc=skipped
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$(date +%s)
  echo "=== $name: $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  last_rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-22s rc=%-3s %4ss' "$name" "$last_rc" "$(( $(date +%s) - t0 ))")")
  return 0
}

step nvidia-smi 30 nvidia-smi -L
# cuDNN and cuBLAS come from the PyTorch install on the GPU machine (pip wheels: nvidia/cudnn/lib,
# nvidia/cu13/lib, ...); their folders go on the loader path for cudarc's dynamic loading.
site=$(python3 -c "import site; print(' '.join(site.getsitepackages()))" 2>/dev/null)
for lib in libcudnn.so.9 libcublas.so.13 libcublasLt.so.13; do
  f=$(find $site -name "$lib" 2>/dev/null | head -n 1)
  [ -n "$f" ] && export LD_LIBRARY_PATH="$(dirname "$f"):${LD_LIBRARY_PATH:-}"
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee -a "$LOG"
step torch-version 60 python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"

step info 60 "$VGG" info --kernels
# 36 s in run 6 (3684 checks); the TMA, cluster and swizzle rows since add some: the limit only
# guards a hang (the budget counts what a step takes, not its limit).
step selftest-cuda 180 "$VGG" selftest --device cuda --json "$RAW/selftest-cuda.json"
# VGG-16 did not learn on the wgmma convs at batch 32 and 64 in runs 5-6, while each kernel alone
# agreed with the direct twin: one step under wgmma and under auto from the same weights, every
# gradient compared, says which layer and pass part ways (bench/results/2026-11-30-h200.md).
# Then the same 25 steps with every buffer its own bytes and free bytes poisoned each phase: if
# the losses change (run 6 without: 6.917 -> 8.762 at batch 32), a kernel reads or writes outside
# its buffers in the model (a fault that separate allocations in bench conv and the selftest hide);
# a write past a buffer's end into the 64 KiB guard band behind it fails the step, naming the
# phase and the buffer (~70 band reads a phase: tens of ms a step).
# Both runs then go on for 25 steps and print every step's two losses. A fault parts them from
# the first step, at any learning rate; a run at the edge of stability (auto 5.932 against
# PyTorch's 5.015 after the same 25 steps at batch 64) only later, and less at lr 1e-3. The
# control: winograd4x4 against auto, two plans of ours that are both correct.
if "$VGG" bench train --help 2>/dev/null | grep -q -- --check-against; then
  step wgmma-check 60 "$VGG" bench train --device cuda --model D --batch 32,64 --conv-algo wgmma --check-against auto \
    --warmup 5 --steps 20
  # The third opinion, where wgmma and auto part: PyTorch's gradient of the same first step
  # (float64 on the GPU, the dumped fp16 weights and batch), without dropout so that the step is
  # a plain function of them. A policy whose tensors differ from PyTorch's by ~1 where the
  # other's stay at fp16 rounding (~1e-3 .. 1e-1) computes wrongly; both small: sensitivity.
  # ~1.7 GB written, kept out of $OUT.
  if "$VGG" bench train --help 2>/dev/null | grep -q -- --dump-step0; then
    STEP0=${TMPDIR:-/tmp}/vgg-step0
    step wgmma-torch-dump 60 "$VGG" bench train --device cuda --model D --batch 32 --conv-algo wgmma --check-against auto \
      --dropout 0 --warmup 0 --steps 1 --dump-step0 "$STEP0"
    step wgmma-torch 120 python3 scripts/torch_grad_check.py "$STEP0/batch32"
    rm -rf "$STEP0"
  fi
  if "$VGG" bench train --help 2>/dev/null | grep -q -- --lr; then
    step wgmma-check-lr3 60 "$VGG" bench train --device cuda --model D --batch 32,64 --conv-algo wgmma \
      --check-against auto --warmup 5 --steps 20 --lr 1e-3
    step wino4-check 40 "$VGG" bench train --device cuda --model D --batch 32,64 --conv-algo winograd4x4 \
      --check-against auto --warmup 5 --steps 20
  fi
  step wgmma-memory 60 "$VGG" bench train --device cuda --model D --batch 32 --conv-algo wgmma --check-memory \
    --warmup 5 --steps 20
fi
# The trainer end to end on the GPU: the README's small network on the synthetic data (~1 s
# each), under Auto and with every conv it can on wgmma. At lr 0.01 (the default since runs
# 5-6) it ends well above chance under every correct plan emu tried (val top-1 0.575-0.688;
# bench/NOTES.md, "The small run at lr 0.02"): a wgmma run near chance here names a fault.
step train-small 90 "$VGG" train --device cuda --quiet
step train-small-wgmma 90 "$VGG" train --device cuda --quiet --conv-algo wgmma
if "$VGG" bench conv --help >/dev/null 2>&1; then
  step bench-conv 180 "$VGG" bench conv --device cuda --batch "$BATCH" --json "$RAW/bench-conv.json" --plot "$RAW/bench-conv.png"
fi
# The wgmma implicit GEMM (fprop, dgrad, wgrad) on every 3x3 layer but conv1_1, ours only
# (cuDNN's rows are bench-conv's): the first timing of a wgmma kernel of ours (predictions in
# bench/NOTES.md, "A wgmma conv").
if "$VGG" bench conv --help 2>/dev/null | grep -q wgmma; then
  step bench-conv-wgmma 90 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --json "$RAW/bench-conv-wgmma.json"
fi
# The same 256 x N halo tile with both operands brought by the TMA engine (8 positions of a padded
# row a box, filters a box a stage; bench/NOTES.md, "A TMA-fed halo tile"): fprop and dgrad on every
# layer but conv1_1 (it fits widths up to 182 at N 128, 246 at N 64).
if "$VGG" bench conv --help 2>/dev/null | grep -q tma; then
  step bench-conv-wgmma-tma 60 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn --passes fprop,dgrad \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling tma --json "$RAW/bench-conv-wgmma-tma.json"
fi
# The TMA tile with a producer warp and per-buffer barriers instead of a __syncthreads a stage, and
# the wgrad's halo tile so fed, with a producer warpgroup (bench/NOTES.md, "A TMA-fed wgrad").
if "$VGG" bench conv --help 2>/dev/null | grep -q tma-ws; then
  step bench-conv-wgmma-tma-ws 90 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling tma-ws --json "$RAW/bench-conv-wgmma-tma-ws.json"
fi
# That tile in clusters of 2 blocks that load each filter box once for both (TMA multicast; bench/NOTES.md,
# "A cluster of two for the TMA halo tile"): fprop and dgrad, at the same widths; and the wgrad, whose clusters
# share the X boxes where K > 128 ("The TMA wgrad in clusters of two"; Region's wgrad below that).
if "$VGG" bench conv --help 2>/dev/null | grep -q tma-mc; then
  step bench-conv-wgmma-tma-mc 90 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling tma-mc --json "$RAW/bench-conv-wgmma-tma-mc.json"
fi
# And the tall tile (512 x 64: half the filter bytes a flop) so fed, widths up to 118 (conv2_1 on).
if "$VGG" bench conv --help 2>/dev/null | grep -q tma-tall; then
  step bench-conv-wgmma-tma-tall 60 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn --passes fprop,dgrad \
    --layers conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling tma-tall --json "$RAW/bench-conv-wgmma-tma-tall.json"
fi
# The 2-D TMA items (16 rows x 32 columns x 64 channels: a halo of 18 x 40 positions whatever the
# width; bench/NOTES.md, "A 2-D TMA halo tile"): fprop and dgrad on every layer but conv1_1, most
# of all conv1_2 (224 wide), where the 1-D items' halo holds 2.9x their outputs.
if "$VGG" bench conv --help 2>/dev/null | grep -q tma-2d; then
  step bench-conv-wgmma-tma-2d 60 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn --passes fprop,dgrad \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling tma-2d --json "$RAW/bench-conv-wgmma-tma-2d.json"
  # Its wgrad for K <= 64 (all 9 taps a block over 8 x 16 position tiles): conv1_2, our slowest wgrad.
  step bench-conv-wgmma-tma-2d-wgrad 30 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn --passes wgrad \
    --layers conv1_2 --algo wgmma --wino-tiling tma-2d --json "$RAW/bench-conv-wgmma-tma-2d-wgrad.json"
fi
# The cp.async halo tile's other two forms (after the TMA ones, which would replace them if TMA pays):
# The tall halo tile (512 positions x 64 channels: half the filter bytes a flop of 256 x 128,
# more halo bytes) for fprop and dgrad where it fits (widths up to 125: conv2_1 on), beside
# bench-conv-wgmma's 256 x N tile: bench/NOTES.md, "The tall halo tile".
if "$VGG" bench conv --help 2>/dev/null | grep -q tall; then
  step bench-conv-wgmma-tall 60 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn --passes fprop,dgrad \
    --layers conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling tall --json "$RAW/bench-conv-wgmma-tall.json"
fi
# The 256 x N halo tile with its operands in the 128-byte swizzle (bench/NOTES.md, "Two more
# leads"): only meaningful if the selftest's `sw128` rows passed (else its rows disagree).
if "$VGG" bench conv --help 2>/dev/null | grep -q swizzled; then
  step bench-conv-wgmma-sw 60 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn --passes fprop,dgrad \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling swizzled --json "$RAW/bench-conv-wgmma-sw.json"
fi
# Global -> shared copies in each form our kernels could use, from L2 and from device memory
# (bench/NOTES.md, "The copy probe"): does the src-size operand, the cache level or the lanes'
# pattern decide the ~50% excess sectors and the rate our wgmma kernels stall at?
if "$VGG" bench copy --help >/dev/null 2>&1; then
  step bench-copy 40 "$VGG" bench copy --device cuda --json "$RAW/bench-copy.json"
fi
# The wgmma kernels on their flat tiles (each input pixel copied once a tap) beside
# bench-conv-wgmma's halo kernels (once for all 9 taps, or for a filter row's 3 in wgrad):
# bench/NOTES.md, "The wgmma halo tile".
if "$VGG" bench conv --help 2>/dev/null | grep -q wgmma; then
  step bench-conv-wgmma-flat 90 "$VGG" bench conv --device cuda --batch "$BATCH" --no-cudnn \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo wgmma --wino-tiling flat --json "$RAW/bench-conv-wgmma-flat.json"
fi
if "$VGG" bench gemm --help >/dev/null 2>&1; then
  step bench-gemm 120 "$VGG" bench gemm --device cuda --json "$RAW/bench-gemm.json"
fi
# The forward products on the TMA tile (wt128x256: the wgmma tile with its operands brought by
# the copy engine in the 128-byte swizzle; bench/NOTES.md, "A TMA GEMM"), ours only.
if "$VGG" bench gemm --help 2>/dev/null | grep -q wt128x256; then
  step bench-gemm-tma 90 "$VGG" bench gemm --device cuda --tile wt128x256 --passes fwd,bwd_data,bwd_weight \
    --no-cublas --no-bandwidth --json "$RAW/bench-gemm-tma.json"
fi
# The FC products on the wgmma tile (planner's split counts), ours only: against bench-gemm's
# cuBLAS rows (predictions in bench/NOTES.md, "wgmma GEMM").
if "$VGG" bench gemm --help 2>/dev/null | grep -q -- --tile; then
  step bench-gemm-wgmma 60 "$VGG" bench gemm --device cuda --tile w128x256 --no-cublas --no-bandwidth \
    --json "$RAW/bench-gemm-wgmma.json"
fi
# The planner's model on the batch-64 rows it changed (bench/NOTES.md, "The GEMM planner, refit"):
# fc6 and fc7 fwd / bwd_data on the 64 x 128 tile at each split count, ours only.
if "$VGG" bench gemm --help 2>/dev/null | grep -q -- --splits; then
  for n in 1 2 4 5 6 8; do
    step "bench-gemm-split$n" 20 "$VGG" bench gemm --device cuda --batch 64 --shapes fc6,fc7 --passes fwd,bwd_data \
      --tile t64x128 --splits "$n" --no-cublas --no-bandwidth --json "$RAW/bench-gemm-split$n.json"
  done
fi
if "$VGG" bench train --help >/dev/null 2>&1; then
  step bench-train 90 "$VGG" bench train --device cuda --model D --batch "$BATCH,128" --warmup 5 --steps 20 \
    --json "$RAW/bench-train.json"
fi
# PyTorch's training steps beside ours (the headline ratio), with the same warm-up and timed
# steps passed to both explicitly, so that a changed default cannot make them differ.
step torch-train 90 python3 scripts/torch_baseline.py "$RAW/torch-train.json" --model vgg16 --batch "$BATCH" --batch 128 \
  --warmup 5 --steps 20
# One of those steps launch by launch (device events around each kernel): where the step's
# time goes beside the conv rows of bench-conv (pools, FC, optimizer, split-K reductions, filter
# transforms), per layer and pass. Predictions in bench/NOTES.md ("Where a step's time goes").
if "$VGG" bench train --help 2>/dev/null | grep -q -- --profile; then
  step bench-train-profile 60 "$VGG" bench train --device cuda --model D --batch "$BATCH" --steps 5 --profile \
    --json "$RAW/bench-train-profile.json"
fi
# Training steps on `hopper`'s plans (Auto's, with the wgmma passes run 5 measured faster: fprop
# and dgrad on all but conv1_1, wgrad where 128 <= C <= 256), profiled: the step a fixed rule gets
# without tuning (runs 5-6 timed all-wgmma plans here: 29.29 ms at batch 64).
if "$VGG" bench train --help 2>/dev/null | grep -q hopper; then
  step bench-train-hopper 60 "$VGG" bench train --device cuda --model D --batch "$BATCH,128" --steps 10 \
    --conv-algo hopper --profile --json "$RAW/bench-train-hopper.json"
fi
# The same steps with each layer's variants (Winograd, wgmma halo and flat) checked against
# Auto's output, timed, and the fastest kept: the best training step of everything we have.
if "$VGG" bench train --help 2>/dev/null | grep -q conv-algo; then
  step bench-train-tune 90 "$VGG" bench train --device cuda --model D --batch "$BATCH,128" --conv-algo tune \
    --warmup 5 --steps 20 --json "$RAW/bench-train-tune.json"
fi
# The headline: ours against PyTorch per batch, images/s and device memory (issue 6's targets).
step train-vs-torch 10 python3 scripts/compare_train.py "$RAW/torch-train.json" "$RAW/bench-train.json" \
  "$RAW/bench-train-tune.json" "$RAW/bench-train-hopper.json"
# The data pipeline on the GPU machine's CPUs (16 cores): can it feed the trainer? This and
# the graph step below are the last measurements the data issue and `--graph`'s default wait
# for; both are short (run 4: bench-data 13 s) and the budget cuts from the end, so they run here.
# lscpu: are the 16 "cores" hyperthreads? (decides how the loader's per-worker rate should scale)
step cpu 10 sh -c "nproc; lscpu | grep -E 'Model name|Thread|Core|Socket|NUMA node\(s\)'"
step bench-data 90 "$VGG" bench data --synthetic --synthetic-size 400 --images 2048 --workers 1,2,4,8,16 --json "$RAW/bench-data.json"
# Steps replayed from a captured CUDA graph (2 launches a step: its variables, the graph),
# VGG-16 as in bench-train: whether `--graph` pays (issue 6; bench/NOTES.md, "CUDA graphs").
if "$VGG" bench train --help 2>/dev/null | grep -q -- --graph; then
  step bench-train-graph 60 "$VGG" bench train --device cuda --model D --batch "$BATCH" --graph \
    --json "$RAW/bench-train-graph.json"
fi
# PyTorch's own conv timings (cuDNN through torch): a cross-check of bench-conv's cuDNN rows.
if [ -f scripts/torch_conv_baseline.py ]; then
  step torch-conv 100 python3 scripts/torch_conv_baseline.py "$RAW/torch-conv.json" --batch "$BATCH"
fi
# Winograd F(4x4) against F(2x2) (the auto rows above): fprop and dgrad of every 3x3 layer but
# conv1_1, ours only, so that Auto's choice per layer can follow the measurement.
if "$VGG" bench conv --help 2>/dev/null | grep -q winograd4x4; then
  step bench-conv-f4 90 "$VGG" bench conv --device cuda --batch "$BATCH" --passes fprop,dgrad --no-cudnn \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3,conv4_1,conv4_2,conv4_3,conv5_1,conv5_2,conv5_3 \
    --algo winograd4x4 --json "$RAW/bench-conv-f4.json"
fi
# Winograd tiling side by side: the layers where auto picks region windows, forced flat (log only).
if "$VGG" bench conv --help 2>/dev/null | grep -q wino-tiling; then
  step bench-conv-flat 60 "$VGG" bench conv --device cuda --batch "$BATCH" --passes fprop,dgrad --no-cudnn \
    --layers conv1_2,conv2_1,conv2_2,conv3_1,conv3_2,conv3_3 --wino-tiling flat --json "$RAW/bench-conv-flat.json"
fi
# VGG-16 through `vgg train` itself (loader workers, page-locked uploads, reads every 8 steps,
# its default conv plans, auto): its img/s against bench-train's device-resident batch-64 row says
# whether the input side keeps up. 200 steps of a 400-step epoch, so that start-up weighs little
# and no epoch-end validation is timed (run 5's 40 steps, one epoch, could not tell).
step train-vgg16 90 "$VGG" train --device cuda --quiet --model D --width 1 --input 224 --fc 4096 \
  --classes 1000 --synthetic-len 25600 --batch 64 --steps 200 --workers 16 --sync-every 8 --conv-algo auto
# The same images pre-resized into raw shards by `vgg prep` (log only).
SHARDS=${TMPDIR:-/tmp}/vgg-shards
step prep-shards 60 "$VGG" prep synthetic "$SHARDS" --images 2048 --synthetic-size 400 --max-side 256
step bench-shards 60 "$VGG" bench data "$SHARDS" --images 2048 --workers 1,2,4,8,16
# Hardware counters of the conv main loops on conv3_2 (ncu works on Firecracker machines, not
# on gVisor: the first profile that runs and fails skips the rest; one skipped by SKIP does not):
# where the time goes, to aim the next kernel change (bank conflicts, L2 and tensor-pipe
# throughput, stall reasons). Log only.
if command -v ncu >/dev/null; then
  # First the copy probe's two cp.async.cg forms on the L2 case: their sector counts side by side.
  if "$VGG" bench copy --help >/dev/null 2>&1; then
    step ncu-probe-copy-cgz 40 ncu --clock-control none --set full -k probe_copy_cgz_p0 --launch-skip 2 \
      --launch-count 1 "$VGG" bench copy --device cuda --cases l2 --methods cgz
    step ncu-probe-copy-cg 40 ncu --clock-control none --set full -k probe_copy_cg_p0 \
      --launch-skip 2 --launch-count 1 "$VGG" bench copy --device cuda --cases l2 --methods cg
  fi
  ncu_works=unknown
  # The TMA-fed halo tiles next: their excess sectors beside the cp.async tile's 50%, the
  # warp-specialised one's stall reasons beside the block-barrier one's, and the multicast one's L2
  # bytes beside the warp-specialised one's; the wgrad's three tiles likewise (eligible warps a
  # scheduler: 0.38 for the cp.async one).
  for k in igemm3x3_wgmma_halo_n128_f16:wgmma:fprop:auto igemm3x3_wgmma_halo_tma_n128_f16:wgmma:fprop:tma \
           igemm3x3_wgmma_halo_tma_ws_n128_f16:wgmma:fprop:tma-ws \
           igemm3x3_wgmma_halo_tma_mc_n128_f16:wgmma:fprop:tma-mc \
           igemm3x3_wgrad_wgmma_halo_c128_f16:wgmma:wgrad:auto \
           igemm3x3_wgrad_wgmma_halo_tma_ws_c128_f16:wgmma:wgrad:tma-ws \
           igemm3x3_wgrad_wgmma_halo_tma_mc_c128_f16:wgmma:wgrad:tma-mc \
           igemm3x3_wgmma_n256_f16:wgmma:fprop:flat \
           wino2x2_fprop_f16:winograd2x2:fprop:auto wino2x2_dgrad_f16:winograd2x2:dgrad:auto \
           wino4x4_fprop_f16:winograd4x4:fprop:auto igemm3x3_wgrad_m128n256_f16:auto:wgrad:auto; do
    [ "$ncu_works" = no ] && break  # the first profile that ran failed: ncu does not work here
    IFS=: read -r kern algo pass tiling <<<"$k"
    step "ncu-$kern" 40 ncu --clock-control none --set full -k "$kern" --launch-skip 2 --launch-count 1 \
      "$VGG" bench conv --device cuda --batch "$BATCH" --layers conv3_2 --passes "$pass" --algo "$algo" \
      --wino-tiling "$tiling" --no-cudnn --repeats 3
    case $last_rc in 0) ncu_works=yes ;; skipped) ;; *) [ "$ncu_works" = unknown ] && ncu_works=no ;; esac
  done
fi
# Queued steps (nothing read back a step, the loss scale kept on the device): what the
# per-step reads cost (predicted: under 1%, bench/NOTES.md).
if "$VGG" bench train --help 2>/dev/null | grep -q -- --queued; then
  step bench-train-queued 60 "$VGG" bench train --device cuda --model D --batch "$BATCH" --queued \
    --json "$RAW/bench-train-queued.json"
fi
# VGG-16 on 32x32 inputs, where ~110 launches may cost more than the kernels: one by one,
# queued and as a graph (predictions in bench/NOTES.md, "CUDA graphs").
if "$VGG" bench train --help 2>/dev/null | grep -q -- --graph; then
  for mode in one-by-one queued graph; do
    flag=$([ $mode = one-by-one ] || echo "--$mode")
    step "bench-train-32px-$mode" 40 "$VGG" bench train --device cuda --model D --input 32 --batch "$BATCH" \
      --steps 50 $flag --json "$RAW/bench-train-32px-$mode.json"
  done
fi
# Evaluation throughput of a VGG-16 (two training steps on synthetic 224-px images, so that a
# checkpoint exists): centre crop, then dense over the whole image plus its flip (log only).
CK=${TMPDIR:-/tmp}/vgg-d
rm -rf "$CK" # vgg train refuses to overwrite an earlier run's checkpoint
step eval-vgg16-ckpt 90 "$VGG" train --device cuda --quiet --model D --width 1 --input 224 --fc 4096 \
  --classes 1000 --synthetic-len 64 --batch 32 --steps 2 --checkpoint-dir "$CK" --conv-algo auto
step eval-vgg16-center 60 "$VGG" eval --weights "$CK/last.safetensors" --data synthetic --synthetic-len 256 \
  --scale 256 --crops center --batch 64
step eval-vgg16-dense 90 "$VGG" eval --weights "$CK/last.safetensors" --data synthetic --synthetic-len 128 \
  --scale 256 --crops dense --flip
if command -v compute-sanitizer >/dev/null && [ "${SANITIZE:-1}" = 1 ]; then
  step sanitizer 45 compute-sanitizer --tool memcheck --error-exitcode 3 "$VGG" selftest --device cuda --only maxpool
  # Shared-memory races in the pipelined tensor-core kernels, on the hardware's own schedule.
  step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 3 "$VGG" selftest --device cuda --only conv_igemm_c8
fi

# Issue 4's headline from the conv files above, outside the budget (it only reads them): per
# layer and pass, our fastest variant whose output agreed against cuDNN, and the totals.
echo "=== conv-vs-cudnn" | tee -a "$LOG"
python3 scripts/compare_conv.py "$RAW/bench-conv.json" "$RAW/bench-conv-wgmma.json" "$RAW/bench-conv-wgmma-tall.json" \
  "$RAW/bench-conv-wgmma-sw.json" \
  "$RAW/bench-conv-wgmma-tma.json" \
  "$RAW/bench-conv-wgmma-tma-tall.json" \
  "$RAW/bench-conv-wgmma-tma-ws.json" \
  "$RAW/bench-conv-wgmma-tma-mc.json" \
  "$RAW/bench-conv-wgmma-tma-2d.json" "$RAW/bench-conv-wgmma-tma-2d-wgrad.json" \
  "$RAW/bench-conv-wgmma-flat.json" "$RAW/bench-conv-f4.json" "$RAW/bench-conv-flat.json" 2>&1 | tee -a "$LOG"

echo
echo "=== summary ($(date -u +%FT%TZ))"
printf '%s\n' "${summary[@]}" | tee -a "$LOG"
grep -E "checks, [0-9]+ failed" "$LOG" | tail -n 1
