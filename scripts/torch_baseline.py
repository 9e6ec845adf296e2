#!/usr/bin/env python3
"""PyTorch baseline for `vgg bench train`: torchvision's VGG training steps on one GPU.

The conditions the issue fixes, so the comparison with our trainer is like for like:
torchvision vgg16 (or 11/13/19), fp16 autocast + GradScaler (dynamic loss scaling),
channels_last, torch.backends.cudnn.benchmark = True, SGD momentum 0.9 with weight decay
5e-4 on the weights only (ours leaves biases out by default), GradScaler's initial loss scale
of 65536 (`vgg bench train`'s too), 1000 classes, 224x224 inputs, device-resident synthetic data (random normal images,
random labels: no data loading in the timed loop), and the same batch, warm-up and timed
steps as ours (`vgg bench train`'s defaults on a GPU, 5 and 20; gpu-check passes both to
both explicitly).
Timed with CUDA events over whole steps (forward, loss, backward, unscale, optimizer step,
scaler update); reports images/s from the median step time and the peak device memory
(torch.cuda.max_memory_allocated).

Usage: torch_baseline.py [OUT.json] [--model vgg16] [--batch 64 --batch 128] [--steps 20] [--warmup 5]
Exit status: 0 ok, 2 when torch / a GPU is missing.
"""

import argparse
import json
import os
import statistics
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?")
    ap.add_argument("--model", default="vgg16", choices=["vgg11", "vgg13", "vgg16", "vgg19"])
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    batches = args.batch or [64]
    try:
        import torch
        import torchvision
    except ImportError as e:
        print(f"torch_baseline: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_baseline: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    rows = []
    for batch in batches:
        torch.manual_seed(0)
        model = getattr(torchvision.models, args.model)(num_classes=1000).to(dev).to(memory_format=torch.channels_last)
        weights = [p for p in model.parameters() if p.dim() > 1]
        biases = [p for p in model.parameters() if p.dim() <= 1]
        groups = [{"params": weights, "weight_decay": 5e-4}, {"params": biases, "weight_decay": 0.0}]
        opt = torch.optim.SGD(groups, lr=1e-2, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda")
        loss_fn = torch.nn.CrossEntropyLoss()
        # Two device-resident batches, alternated, so no step reuses the previous one's input.
        xs = [torch.randn(batch, 3, 224, 224, device=dev).to(memory_format=torch.channels_last) for _ in range(2)]
        ys = [torch.randint(0, 1000, (batch,), device=dev) for _ in range(2)]

        def step(i):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = loss_fn(model(xs[i % 2]), ys[i % 2])
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss

        torch.cuda.reset_peak_memory_stats()
        for i in range(args.warmup):
            step(i)
        torch.cuda.synchronize()
        times = []
        for i in range(args.steps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            loss = step(i)
            b.record()
            times.append((a, b))
        torch.cuda.synchronize()
        ms = [a.elapsed_time(b) for a, b in times]
        med = statistics.median(ms)
        row = {
            "model": args.model,
            "batch": batch,
            "median_step_ms": med,
            "images_per_s": batch / med * 1e3,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "last_loss": float(loss),
            "steps": args.steps,
            "warmup": args.warmup,
        }
        rows.append(row)
        print(f"torch {args.model} batch {batch:4d}: {med:8.2f} ms/step, {row['images_per_s']:8.1f} img/s, "
              f"peak {row['peak_mem_gib']:.2f} GiB, loss {row['last_loss']:.3f}", flush=True)
        del model, opt, xs, ys
        torch.cuda.empty_cache()
    meta = {"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "gpu": torch.cuda.get_device_name(0)}
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
