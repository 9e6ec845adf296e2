#!/usr/bin/env python3
"""PyTorch's gradients for the first training step that `vgg bench train --check-against P
--dropout 0 --dump-step0 DIR` wrote, against each policy's: the third opinion where two of our
conv policies disagree (run 6: VGG-16 did not learn on the wgmma convs on the H200, while each
kernel agreed with the direct twin on its own).

    python3 scripts/torch_grad_check.py DIR/batch32 [--device cuda|cpu] [--dtype float64|float32]

The network is rebuilt from meta.json's layer list with torch.nn.functional and the dumped fp16
weights; the loss is the mean cross-entropy of the dumped batch, normalised as our input kernel
normalises it. Prints, per tensor, each policy's relative L2 difference from PyTorch's gradient.
Reading it: correct fp16 kernels differ from an exact computation by their rounding and by the
ReLU masks and pool windows it flips, up to ~0.1 in the first layers of a small net
(tests/pth.rs); a wrong kernel by ~1. A policy whose tensors sit near 1 where another's stay
small computes wrongly: the first tensor from classifier.6 down that parts names its layer.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def load(path, dtype, shape):
    return np.fromfile(path, dtype=dtype).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    a = ap.parse_args()
    d = Path(a.dir)
    meta = json.loads((d / "meta.json").read_text())
    dt, dev = getattr(torch, a.dtype), torch.device(a.device)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if meta["dropout"] != 0:
        print(f"note: the dump's model has dropout {meta['dropout']}; PyTorch runs without it, so the "
              "classifier's gradients cannot agree (rerun with --dropout 0)")
    n, side = meta["batch"], meta["input"]
    shapes = {t["name"]: t["shape"] for t in meta["tensors"]}
    w = {k: torch.tensor(load(d / "weights" / f"{k}.bin", np.float32, s), dtype=dt, device=dev, requires_grad=True)
         for k, s in shapes.items()}
    img = torch.tensor(load(d / "images.bin", np.uint8, (n, side, side, 3)), device=dev).permute(0, 3, 1, 2).to(dt)
    labels = torch.tensor(load(d / "labels.bin", np.int32, (n,)), device=dev).long()
    mean = torch.tensor(meta["mean"], dtype=dt, device=dev).view(1, 3, 1, 1)
    x = img - mean
    if meta["std"] is not None:
        x = x / torch.tensor(meta["std"], dtype=dt, device=dev).view(1, 3, 1, 1)
    lrn = meta["lrn"]
    for f in meta["features"]:
        k, name = f["kind"], f["name"]
        if k in ("conv3x3", "conv1x1"):
            x = F.relu(F.conv2d(x, w[name + ".weight"], w[name + ".bias"], padding=1 if k == "conv3x3" else 0))
        elif k == "maxpool2x2":
            x = F.max_pool2d(x, 2)
        elif k == "lrn":
            x = F.local_response_norm(x, lrn["size"], alpha=lrn["alpha"], beta=lrn["beta"], k=lrn["k"])
        else:
            raise SystemExit(f"unknown layer kind {k}")
    x = torch.flatten(x, 1)
    fc = meta["classifier"]
    for i, name in enumerate(fc):
        x = F.linear(x, w[name + ".weight"], w[name + ".bias"])
        if i + 1 < len(fc):
            x = F.relu(x)
    loss = F.cross_entropy(x, labels)
    loss.backward()
    pols = meta["policies"]
    print(f"step 0, batch {n}, {side}x{side}, PyTorch {torch.__version__} {a.dtype} on {a.device}: loss {loss.item():.6f}; "
          + ", ".join(f"{p['name']} {p['loss']:.6f} (scale {p['loss_scale']:g})" for p in pols))
    print(f"{'tensor':<24}" + "".join(f"{p['name'] + ' vs torch':>20}" for p in pols))
    worst = {p["name"]: (0.0, "") for p in pols}
    for name in reversed(list(shapes)):
        ref = w[name].grad.detach().cpu().numpy().astype(np.float64).ravel()
        row = f"{name:<24}"
        for p in pols:
            g = load(d / "grads" / p["name"] / f"{name}.bin", np.float32, (-1,)).astype(np.float64)
            rel = float(np.linalg.norm(g - ref) / max(np.linalg.norm(ref), 1e-300)) if np.all(np.isfinite(g)) else float("inf")
            row += f"{rel:>20.3e}"
            if rel > worst[p["name"]][0]:
                worst[p["name"]] = (rel, name)
        print(row)
    for p, (rel, name) in worst.items():
        print(f"{p}: worst {rel:.3e} ({name})")


if __name__ == "__main__":
    main()
