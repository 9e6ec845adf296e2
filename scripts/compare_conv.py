#!/usr/bin/env python3
"""Issue 4's headline from a GPU run: per layer and pass, our fastest correct variant against cuDNN.

Usage: compare_conv.py BENCH_CONV.json [OURS.json ...]
BENCH_CONV.json is a `vgg bench conv --json` file with cuDNN's rows (gpu-check's bench-conv);
each OURS.json another `vgg bench conv --json` file of ours only (bench-conv-wgmma, -f4, ...),
whose file name labels its variant. Per layer and pass: cuDNN's time, each file's time, the
fastest of ours whose output agreed (a row that failed its agreement check or errored is shown
with `!` and never counted as best), the ratio cuDNN / best (> 1: we are faster) and its
effective TFLOP/s. Then, over the rows cuDNN ran: the summed times and the geometric mean of
the ratios, per pass and in all. The best-of-ours column is the data for Auto's per-layer rule.
A missing or unreadable file is a line saying so, not a failure.
"""
import math
import os
import sys

from compare_train import load  # a missing or unreadable file: a line saying so, and None


def label(path):
    return os.path.splitext(os.path.basename(path))[0]


def our_time(row):
    """(ms, algo, ok) of our side of a row; ms None when it did not run."""
    ours = row.get("ours")
    if not ours or row.get("ours_error") or ours.get("ms") is None:
        return None, None, False
    agreement = row.get("agreement")
    ok = bool(agreement and agreement.get("pass"))
    return ours["ms"], ours.get("algo", "?"), ok


def table(base, others):
    """Rows keyed by (layer, pass, problem shape) in base's order, so that files run at another
    --batch are not compared as one problem: cuDNN's ms, and [(file, algo, ms, ok)]."""
    keys, cudnn, gflop, ours = [], {}, {}, {}
    for name, report in [(label(base[0]), base[1])] + others:
        for r in (report or {}).get("rows", []):
            if not isinstance(r, dict) or "layer" not in r or "pass" not in r:
                print(f"{name}: a row without layer or pass, left out")
                continue
            if any(r.get(d) is None for d in "nhwck"):
                print(f"{name}: a {r['layer']} {r['pass']} row without its shape (an older binary?): "
                      "it matches no other file's rows")
            key = (r["layer"], r["pass"]) + tuple(r.get(d) for d in "nhwck")
            if key not in ours:
                keys.append(key)
                ours[key] = []
            gflop[key] = r.get("gflop")
            cudnn_ms = (r.get("cudnn") or {}).get("ms")
            if cudnn_ms is not None and not r.get("cudnn_error") and key not in cudnn:
                cudnn[key] = cudnn_ms
            ms, algo, ok = our_time(r)
            if ms is not None:
                ours[key].append((name, algo, ms, ok))
    return keys, cudnn, gflop, ours


def main(argv):
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    base = (argv[0], load(argv[0]))
    others = [(label(p), load(p)) for p in argv[1:]]
    keys, cudnn, gflop, ours = table(base, others)
    if not keys:
        print("no rows")
        return 0
    print(f"{'layer':<8} {'pass':<5} {'N':>4} {'cuDNN ms':>9}  {'best of ours':<34} {'ms':>8} {'TFLOP/s':>8} {'ratio':>6}  others")
    best_of = {}
    for key in keys:
        good = [o for o in ours[key] if o[3]]
        best = min(good, key=lambda o: o[2]) if good else None
        best_of[key] = best
        c = cudnn.get(key)
        ratio = c / best[2] if (c and best) else None
        tflops = gflop[key] / best[2] if (best and gflop.get(key)) else None
        rest = ", ".join(f"{n}:{a} {ms:.3f}{'' if ok else '!'}" for n, a, ms, ok in ours[key] if not best or
                         (n, a, ms, ok) != best)
        print(f"{key[0]:<8} {key[1]:<5} {key[2] if key[2] is not None else '-':>4} {c if c else float('nan'):>9.3f}  "
              f"{(best[0] + ':' + best[1]) if best else 'none agreed':<34} "
              f"{best[2] if best else float('nan'):>8.3f} {tflops if tflops else float('nan'):>8.1f} "
              f"{(f'{ratio:.2f}x') if ratio else '-':>6}  {rest}")
    print()
    for which in ["fprop", "dgrad", "wgrad", None]:
        both = [k for k in keys if (which is None or k[1] == which) and k in cudnn and best_of[k]]
        if not both:
            continue
        ours_ms = sum(best_of[k][2] for k in both)
        cudnn_ms = sum(cudnn[k] for k in both)
        gmean = math.exp(sum(math.log(cudnn[k] / best_of[k][2]) for k in both) / len(both))
        faster = sum(1 for k in both if best_of[k][2] <= cudnn[k])
        print(f"{which or 'all':<6} {len(both):>3} rows: ours {ours_ms:8.2f} ms, cuDNN {cudnn_ms:8.2f} ms, "
              f"sum ratio {cudnn_ms / ours_ms:.2f}x, geometric mean {gmean:.2f}x, {faster} at least as fast")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
