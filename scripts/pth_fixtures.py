#!/usr/bin/env python3
"""Writes tests/fixtures/*.pth: tiny VGG A state dicts saved by PyTorch's own torch.save, in
the forms a user may hold (tests/pth.rs reads them back and checks every value).

Needs torch (any 2.x; the committed files were written by 2.15.0 on the CPU). The network is
VGG A at width 1/16 with torchvision's names, for 32x32 inputs, FC 16, 3 classes (37,131
parameters: `vgg info --model A --width 0.0625 --input 32 --fc 16 --classes 3`). Each value is
exact in the file's dtype and computable without the file:
    v = ((7 i + 13 t) mod (2 M + 1) - M) / 8192
for element i (row-major) of the tensor whose name's bytes sum to t; M is 1000 for float32 and
float16 files, 127 for bfloat16 (8 significant bits).

    scripts/pth_fixtures.py tests/fixtures
"""
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
    print("torch", torch.__version__, "->", sorted(p.name for p in out.glob("*.pth")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
