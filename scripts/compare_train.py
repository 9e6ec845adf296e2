#!/usr/bin/env python3
"""The headline of a GPU run: our training images/s against PyTorch's, per batch size.

Usage: compare_train.py TORCH.json OURS.json [OURS2.json ...]
TORCH.json is scripts/torch_baseline.py's output, each OURS.json a `vgg bench train --json`
file (its name labels the row: bench-train, bench-train-tune, ...). Prints, per batch, both
rates, ours / PyTorch, and device memory (ours: reserved by the process, or the model's plan
where the device cannot tell; PyTorch: its allocator's peak). A missing or unreadable file is a
line saying so, not a failure: the comparison is printed with whatever the run produced.
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"{path}: not read ({e})")
        return None


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    torch = load(argv[0])
    torch_rows = {r["batch"]: r for r in (torch or {}).get("rows", [])}
    gib = 2**30
    print(f"{'run':<22} {'batch':>5} {'ours img/s':>11} {'torch img/s':>12} {'ratio':>6} "
          f"{'ours GiB':>9} {'torch GiB':>10}")
    for path in argv[1:]:
        rows = load(path)
        name = os.path.splitext(os.path.basename(path))[0]
        for r in rows or []:
            t = torch_rows.get(r["batch"])
            mem = r.get("reserved_bytes") or r.get("model_bytes")
            ratio = f"{r['images_per_s'] / t['images_per_s']:.2f}x" if t else "-"
            print(f"{name:<22} {r['batch']:>5} {r['images_per_s']:>11.1f} "
                  f"{t['images_per_s'] if t else float('nan'):>12.1f} {ratio:>6} "
                  f"{mem / gib if mem else float('nan'):>9.2f} {t['peak_mem_gib'] if t else float('nan'):>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
