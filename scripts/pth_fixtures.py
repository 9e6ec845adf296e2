#!/usr/bin/env python3
"""Writes tests/fixtures/*.pth: tiny VGG A state dicts saved by PyTorch's own torch.save, in
the forms a user may hold (tests/pth.rs reads them back and checks every value).

Needs torch (any 2.x; the committed files were written by 2.15.0 on the CPU). The network is
VGG A at width 1/16 with torchvision's names, for 32x32 inputs, FC 16, 3 classes (37,131
parameters: `vgg info --model A --width 0.0625 --input 32 --fc 16 --classes 3`). Each value is
exact in the file's dtype and computable without the file:
    v = ((7 i + 13 t) mod (2 M + 1) - M) / 8192
for element i (row-major) of the tensor whose name's bytes sum to t; M is 1000 for float32 and
float16 files, 127 for bfloat16 (8 significant bits). Beside them, vgg_a_tiny_he.pth (64x64
input, He-normal weights) and vgg_a_tiny_he_logits.json, PyTorch's logits for it on a few
formula images: a check of the whole network against PyTorch's own ops; and the losses and
updates of three torch.optim.SGD steps on them, a check of the training step.

    scripts/pth_fixtures.py tests/fixtures
"""
import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch

CFG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def shapes(width=1 / 16, side=32, fc=16, classes=3):
    out, c, idx = [], 3, 0
    for v in CFG_A:
        if v == "M":
            idx += 1
            continue
        k = int(v * width)
        out += [(f"features.{idx}.weight", (k, c, 3, 3)), (f"features.{idx}.bias", (k,))]
        c, idx = k, idx + 2  # conv, relu
    flat = c * (side // 32) ** 2
    for j, (i, o) in zip([0, 3, 6], [(flat, fc), (fc, fc), (fc, classes)]):
        out += [(f"classifier.{j}.weight", (o, i)), (f"classifier.{j}.bias", (o,))]
    return out


def values(name, shape, m):
    t = sum(name.encode())
    n = 1
    for s in shape:
        n *= s
    i = torch.arange(n, dtype=torch.int64)
    return (((7 * i + 13 * t) % (2 * m + 1) - m).to(torch.float64) / 8192).reshape(shape)


def state_dict(dtype, m):
    return OrderedDict((n, values(n, s, m).to(dtype)) for n, s in shapes())


def images(n=4, side=64):
    """tests/pth.rs's inputs: NHWC uint8, v = (7 x + 13 y + 29 c + 31 n + x y) mod 256."""
    img = torch.empty((n, side, side, 3), dtype=torch.int64)
    for b in range(n):
        for y in range(side):
            for x in range(side):
                for c in range(3):
                    img[b, y, x, c] = (7 * x + 13 * y + 29 * c + 31 * b + x * y) % 256
    return img


def vgg_a(sd, x):
    """VGG A's forward in torch.nn.functional, in eval mode (no dropout), from a state dict."""
    idx = 0
    for v in CFG_A:
        if v == "M":
            x = torch.nn.functional.max_pool2d(x, 2)
            idx += 1
            continue
        x = torch.relu(torch.nn.functional.conv2d(x, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1))
        idx += 2
    x = torch.flatten(x, 1)  # CHW order, as torchvision's VGG flattens
    for j in (0, 3):
        x = torch.relu(torch.nn.functional.linear(x, sd[f"classifier.{j}.weight"], sd[f"classifier.{j}.bias"]))
    return torch.nn.functional.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def he_model_and_logits(out):
    """A 64x64 VGG A (a 2x2 last feature map: the first FC reads it in CHW order) with He-normal
    weights and small random biases, float32, and PyTorch's logits for images(), computed in
    float64 with torchvision's input normalisation."""
    g = torch.Generator().manual_seed(2026)
    sd = OrderedDict()
    for n, s in shapes(side=64):
        fan_in = 1
        for d in s[1:]:
            fan_in *= d
        std = (2.0 / fan_in) ** 0.5 if n.endswith("weight") else 0.1
        sd[n] = (torch.randn(s, generator=g, dtype=torch.float64) * std).to(torch.float32)
    torch.save(sd, out / "vgg_a_tiny_he.pth")
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    x = (images().permute(0, 3, 1, 2).to(torch.float64) / 255 - mean) / std
    logits = vgg_a({k: v.to(torch.float64) for k, v in sd.items()}, x)
    doc = {"torch": torch.__version__, "logits": logits.tolist()}
    doc["train"] = sgd_steps(sd, x)
    (out / "vgg_a_tiny_he_logits.json").write_text(json.dumps(doc, indent=1) + "\n")


# The training check: three steps of torch.optim.SGD on the images above (labels 0, 1, 2, 1),
# momentum 0.9, weight decay 5e-4 on the weights and none on the biases (vgg train's default),
# no dropout, float64, lr 1e-4 (at 0.01 and 0.001 this badly conditioned net's loss rises from
# 2.2 to 8.9 and 4.2 in three steps, where small differences grow).
SGD_LR = 1e-4
SGD_LABELS = [0, 1, 2, 1]
SGD_STEPS = 3
# Tensors whose whole update is kept (small ones); every tensor's update norm is kept.
SGD_FULL = ["features.0.bias", "classifier.3.bias", "classifier.6.weight", "classifier.6.bias"]


def sgd_steps(sd, x):
    p = OrderedDict((k, v.to(torch.float64).clone().requires_grad_(True)) for k, v in sd.items())
    opt = torch.optim.SGD(
        [
            {"params": [v for k, v in p.items() if k.endswith("weight")], "weight_decay": 5e-4},
            {"params": [v for k, v in p.items() if k.endswith("bias")], "weight_decay": 0.0},
        ],
        lr=SGD_LR,
        momentum=0.9,
    )
    labels = torch.tensor(SGD_LABELS)
    losses = []
    for _ in range(SGD_STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(vgg_a(p, x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    delta = {k: (v.detach() - sd[k].to(torch.float64)) for k, v in p.items()}
    # How much fp16 alone moves each gradient here: the first step's gradients with the weights
    # and the normalised input rounded to float16 (still float64 math), relative L2 against the
    # exact ones. The early layers' gradients are sums with much cancellation (1-3% here); the
    # test's bound on each tensor grows with it.
    exact = step_grads(sd, x)
    rounded = step_grads({k: v.half().double() for k, v in sd.items()}, x.half().double())
    sens = {k: ((rounded[k] - exact[k]).norm() / exact[k].norm()).item() for k in exact}
    return {
        "lr": SGD_LR,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "labels": SGD_LABELS,
        "losses": losses,
        "update_norm": {k: d.norm().item() for k, d in delta.items()},
        "update": {k: delta[k].flatten().tolist() for k in SGD_FULL},
        "fp16_sensitivity": sens,
    }


def step_grads(sd, x):
    p = OrderedDict((k, v.to(torch.float64).clone().requires_grad_(True)) for k, v in sd.items())
    torch.nn.functional.cross_entropy(vgg_a(p, x), torch.tensor(SGD_LABELS)).backward()
    return {k: v.grad for k, v in p.items()}


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # torchvision's own form since PyTorch 1.6: a zip archive, float32.
    torch.save(state_dict(torch.float32, 1000), out / "vgg_a_tiny.pth")
    # The legacy stream (PyTorch < 1.6, and torchvision's 2017 VGG files), float16, with
    # tensors that are not each a whole contiguous storage: classifier.0.weight a transposed
    # view, features.3.weight at an offset into a larger storage.
    sd = state_dict(torch.float16, 1000)
    w = sd["classifier.0.weight"]
    sd["classifier.0.weight"] = w.t().contiguous().t()
    w = sd["features.3.weight"]
    big = torch.cat([torch.full((5,), 9.0, dtype=w.dtype), w.flatten()])
    sd["features.3.weight"] = big[5:].view(w.shape)
    torch.save(sd, out / "vgg_a_tiny_legacy.pth", _use_new_zipfile_serialization=False)
    # A training checkpoint of a DataParallel model: the state dict under "state_dict" with
    # "module." names, beside other entries; bfloat16; pickle protocol 4 (its FRAME, MEMOIZE
    # and STACK_GLOBAL opcodes: torch.load reads it only with weights_only=False).
    sd = state_dict(torch.bfloat16, 127)
    ck = {"epoch": 3, "lr": 0.01, "state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}
    torch.save(ck, out / "vgg_a_tiny_wrapped.pth", pickle_protocol=4)
    he_model_and_logits(out)
    print("torch", torch.__version__, "->", sorted(p.name for p in out.glob("*.pth")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
