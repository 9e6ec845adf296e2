#!/usr/bin/env python3
"""PyTorch timing of VGG-16's 3x3 convolutions: the independent cross-check of the cuDNN
numbers that `vgg bench conv` takes through its own cuDNN binding.

Same layers, batch, data type and layout as the Rust bench: fp16, channels_last (NHWC
activations, KRSC filters), pad 1, stride 1, torch.backends.cudnn.benchmark = True (cuDNN's
fastest algorithm per shape). Passes:
  fprop  F.conv2d(x, w, padding=1)
  dgrad  aten.convolution_backward(dy, x, w, ..., output_mask=(True, False, False))
  wgrad  aten.convolution_backward(dy, x, w, ..., output_mask=(False, True, False))
The backward calls are what autograd, torch.nn.grad.conv2d_input and conv2d_weight run; they
are called with the real channels_last x and w, because those helpers pass a zero-stride
dummy for the tensor they do not need, which can steer the memory format away from NHWC.

Timing as in src/bench/mod.rs: random normal inputs (never zeros) in enough sets that the
bytes touched between two uses of one set exceed twice the 60 MB L2, warm-up, then samples of
back-to-back calls bracketed by CUDA events (each sample preceded by one untimed call so the
GPU is busy when the start event is reached), the median per call. Effective TFLOP/s counts
the direct convolution's 2*N*H*W*C*K*9 FLOPs.

Usage: torch_conv_baseline.py [OUT.json] [--batch 64] [--layers all|conv1_2,...]
                              [--passes fprop,dgrad,wgrad] [--repeats R]
Exit status: 0 when every row was measured, 1 when some failed, 2 when no GPU / no torch.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

LAYERS = [  # name, H = W, C, K
    ("conv1_1", 224, 3, 64),
    ("conv1_2", 224, 64, 64),
    ("conv2_1", 112, 64, 128),
    ("conv2_2", 112, 128, 128),
    ("conv3_1", 56, 128, 256),
    ("conv3_2", 56, 256, 256),
    ("conv3_3", 56, 256, 256),
    ("conv4_1", 28, 256, 512),
    ("conv4_2", 28, 512, 512),
    ("conv4_3", 28, 512, 512),
    ("conv5_1", 14, 512, 512),
    ("conv5_2", 14, 512, 512),
    ("conv5_3", 14, 512, 512),
]
PASSES = ("fprop", "dgrad", "wgrad")
L2_BYTES = 60 << 20


def parse_args():
    ap = argparse.ArgumentParser(description="PyTorch/cuDNN timing of VGG-16's 3x3 convolutions")
    ap.add_argument("json", nargs="?", help="write the report as JSON to this file")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layers", default="all", help="all, or a comma-separated list such as conv1_2,conv3_1")
    ap.add_argument("--passes", default="fprop,dgrad,wgrad")
    ap.add_argument("--repeats", type=int, default=None, help="timed samples (default: ~20 ms worth, at least 10)")
    args = ap.parse_args()
    names = [l[0] for l in LAYERS]
    if args.layers.strip() == "all":
        args.layer_list = list(LAYERS)
    else:
        wanted = [s.strip() for s in args.layers.split(",") if s.strip()]
        bad = [s for s in wanted if s not in names]
        if bad or not wanted:
            ap.error(f"unknown layer(s) {bad} (layers: {', '.join(names)}, or all)")
        args.layer_list = [l for w in wanted for l in LAYERS if l[0] == w]
    args.pass_list = [s.strip() for s in args.passes.split(",") if s.strip()]
    if args.passes.strip() == "all":
        args.pass_list = list(PASSES)
    bad = [p for p in args.pass_list if p not in PASSES]
    if bad or not args.pass_list:
        ap.error(f"unknown pass(es) {bad} (passes: {', '.join(PASSES)})")
    if args.batch < 1 or (args.repeats is not None and args.repeats < 1):
        ap.error("--batch and --repeats must be at least 1")
    return args


def pass_bytes(n, hw, c, k, p):
    """Bytes one call touches: its two fp16 inputs and its output (dw in the filter dtype)."""
    x, w, y = n * hw * hw * c * 2, k * 9 * c * 2, n * hw * hw * k * 2
    return {"fprop": x + w + y, "dgrad": y + w + x, "wgrad": x + y + w}[p]


def time_calls(torch, fn, samples=None, warmup=5, min_samples=10, target_ms=20.0, min_sample_ms=1.0, budget_ms=2000.0):
    """fn(i) queues one call on input set i; returns (median ms, min ms, samples, calls per sample)."""
    counter = [0]

    def calls(n):
        for _ in range(n):
            fn(counter[0])
            counter[0] += 1

    def timed(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        calls(n)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    calls(1)  # cudnn.benchmark searches here
    torch.cuda.synchronize()
    est = max(timed(1), 1e-4)
    if warmup > 1 and est * (warmup + 3) <= budget_ms / 4:
        calls(warmup - 1)
        calls(1)  # keeps the GPU busy while the timed calls are queued
        est = max(timed(3) / 3, 1e-4)
    per = min(max(math.ceil(min_sample_ms / est), 1), 1000)
    if samples is None:
        want = max(math.ceil(target_ms / (est * per)), min_samples)
        affordable = max(int(budget_ms / 2 / (est * per + est)), 3)
        samples = min(want, affordable)
    times = []
    for _ in range(samples):
        calls(1)
        times.append(timed(per) / per)
    return statistics.median(times), min(times), samples, per


def bench_layer(torch, F, args, name, hw, c, k, emit):
    n = args.batch
    dev = torch.device("cuda")
    cl = torch.channels_last
    lightest = min(pass_bytes(n, hw, c, k, p) for p in args.pass_list)
    nsets = min(max(math.ceil(2 * L2_BYTES / lightest), 2), 64)

    def randn(shape, scale):
        return torch.empty(shape, device=dev, dtype=torch.float16, memory_format=cl).normal_(0.0, scale)

    sets = [
        (randn((n, c, hw, hw), 1.0), randn((k, c, 3, 3), 1.0 / math.sqrt(9 * c)), randn((n, k, hw, hw), 1.0 / math.sqrt(9 * k)))
        for _ in range(nsets)
    ]
    aten_bwd = torch.ops.aten.convolution_backward
    one = [1, 1]

    def call(p, i):
        x, w, dy = sets[i % nsets]
        if p == "fprop":
            return F.conv2d(x, w, None, 1, 1)
        if p == "dgrad":
            return aten_bwd(dy, x, w, None, one, one, one, False, [0, 0], 1, [True, False, False])[0]
        return aten_bwd(dy, x, w, None, one, one, one, False, [0, 0], 1, [False, True, False])[1]

    for p in args.pass_list:
        flops = 2.0 * n * hw * hw * c * k * 9
        row = {"layer": name, "pass": p, "n": n, "h": hw, "w": hw, "c": c, "k": k, "gflop": flops / 1e9, "sets": nsets}
        try:
            out = call(p, 0)
            row["out_channels_last"] = bool(out.is_contiguous(memory_format=cl))
            del out
            med, lo, samples, per = time_calls(torch, lambda i: call(p, i), samples=args.repeats)
            row.update(ms=med, min_ms=lo, tflops=flops / (med * 1e-3) / 1e12, samples=samples, calls_per_sample=per)
        except Exception as e:  # keep going past a failing pass
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        emit(row)
    del sets


def write_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def main():
    args = parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:
        print(f"error: PyTorch is not importable: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: torch.cuda.is_available() is False: no GPU for the baseline", file=sys.stderr)
        return 2
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = True
    report = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(0),
        "batch": args.batch,
        "layout": "channels_last fp16, cudnn.benchmark",
        "l2_bytes": L2_BYTES,
        "rows": [],
    }
    print(f"torch {report['torch']} (CUDA {report['cuda']}, cuDNN {report['cudnn']}) on {report['device']}, batch {args.batch}")
    print(f"{'layer':<8} {'pass':<5} {'shape':<18} {'ms':>9} {'TFLOP/s':>8} {'samples':>8}  note")

    def emit(row):
        shape = f"{row['n']}x{row['h']}x{row['w']} {row['c']}>{row['k']}"
        if "error" in row:
            print(f"{row['layer']:<8} {row['pass']:<5} {shape:<18} {'-':>9} {'-':>8} {'-':>8}  {row['error']}")
        else:
            note = "" if row.get("out_channels_last") else "output not channels_last"
            print(
                f"{row['layer']:<8} {row['pass']:<5} {shape:<18} {row['ms']:>9.4f} {row['tflops']:>8.1f} "
                f"{row['samples']:>4}x{row['calls_per_sample']:<3}  {note}"
            )
        sys.stdout.flush()
        report["rows"].append(row)
        if args.json:
            write_atomic(args.json, report)  # partial results survive a killed run

    t0 = time.time()
    for name, hw, c, k in args.layer_list:
        try:
            bench_layer(torch, F, args, name, hw, c, k, emit)
        except Exception as e:  # e.g. out of memory allocating the inputs
            for p in args.pass_list:
                emit({"layer": name, "pass": p, "n": args.batch, "h": hw, "w": hw, "c": c, "k": k,
                      "error": f"{type(e).__name__}: {e}".splitlines()[0]})
        torch.cuda.empty_cache()
    rows = report["rows"]
    ok = [r for r in rows if "error" not in r]
    total = sum(r["ms"] for r in ok)
    geo = math.exp(sum(math.log(r["tflops"]) for r in ok) / len(ok)) if ok else float("nan")
    report["summary"] = {"rows": len(rows), "measured": len(ok), "total_ms": total, "geomean_tflops": geo}
    if args.json:
        write_atomic(args.json, report)
    print(f"{len(rows)} rows, {len(ok)} measured; total {total:.3f} ms; geomean {geo:.1f} TFLOP/s ({time.time() - t0:.1f} s)")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
