#!/usr/bin/env python3
"""Is VGG-16 training under `vgg bench train`'s conditions at the edge of stability?

Runs 25 (--steps) fp32 training steps of torchvision's vgg16 under the conditions of
scripts/torch_baseline.py (torchvision's initialisation from seed 0, two alternating batches of
random normal 224 x 224 images with random labels of 1000 classes, SGD lr 1e-2, momentum 0.9,
weight decay 5e-4 on the weights only, dropout on) on any device PyTorch has, the CPU included,
and prints every step's loss. `--eps E --seed S` multiplies every gradient element by
(1 + E N(0, 1)) before each step (noise from seed S): a stand-in for the difference between two
correct convolution plans (~1e-3 relative L2 between our wgmma and Winograd gradients on emu,
bench/NOTES.md). The dropout masks are the same in every run, so two runs differ only by that
perturbation. Runs 5-6 on the H200 saw VGG-16 barely learn, or its loss rise, on our wgmma plans
at batch 32 and 64 while Auto's learned; if a correct fp32 run here already jumps by several
nats between steps, and runs a 1e-3 perturbation apart part ways, such loss gaps say nothing
about correctness (bench/NOTES.md, "wgmma training: a fault, or a run at the edge of stability?").

Usage: torch_sensitivity.py [--batch 32] [--steps 25] [--eps 0] [--seed 0] [--lr 1e-2] [--device cpu]
About 20 s a step at batch 32 on 2 CPU cores.
"""

import argparse
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--eps", type=float, default=0.0, help="relative gradient noise (0: none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the gradient noise")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    try:
        import torch
        import torchvision
    except ImportError as e:
        print(f"torch_sensitivity: {e}", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.vgg16(num_classes=1000).to(dev)
    weights = [p for p in model.parameters() if p.dim() > 1]
    biases = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": weights, "weight_decay": 5e-4}, {"params": biases, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
    data = torch.Generator().manual_seed(1)
    xs = [torch.randn(args.batch, 3, 224, 224, generator=data).to(dev) for _ in range(2)]
    ys = [torch.randint(0, 1000, (args.batch,), generator=data).to(dev) for _ in range(2)]
    noise = torch.Generator().manual_seed(args.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for i in range(args.steps):
        t0 = time.time()
        torch.manual_seed(100 + i)  # the same dropout masks in every run
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xs[i % 2]), ys[i % 2])
        loss.backward()
        if args.eps > 0:
            for p in model.parameters():
                p.grad.mul_(1 + args.eps * torch.randn(p.grad.shape, generator=noise).to(dev))
        opt.step()
        losses.append(loss.item())
        print(f"step {i} loss {losses[-1]:.4f} ({time.time() - t0:.1f} s)", flush=True)
    print("losses", " ".join(f"{v:.4f}" for v in losses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
