#!/usr/bin/env python3
"""Accuracy of fused Winograd F(m x m, 3x3) with fp16 storage, simulated in numpy.

Models the rounding points of kernels/winograd_conv.cu and winograd4_conv.cu: inputs and filters
are fp16, the input transform V = B^T d B is computed in fp32 and stored as fp16 (F(4x4)) or in
half2 arithmetic, rounded after each of its two passes (F(2x2), the `half2 V` rows), the filter transform U = G g G^T
likewise, M = sum_c V U accumulates in fp32 (tensor cores: exact fp16 products), the output
transform in fp32 and the result is rounded to fp16. Compares with the f64 direct convolution
of the same fp16 inputs, the measure of src/selftest/conv.rs (bound: rel L2 <= 3e-3,
max |err| <= 2e-2 max |ref|).

F(4x4, 3x3) matrices are built for any interpolation points (plus infinity), so point sets can
be compared; usage: python3 scripts/winograd_fp16_error.py
"""
import numpy as np


def f16(a):
    return a.astype(np.float16).astype(np.float64)


def f32(a):
    return a.astype(np.float32).astype(np.float64)


def matrices(points, m, r=3):
    """(B^T, G, A^T) of F(m, r) for the finite `points` and infinity, by Toom-Cook: A^T holds
    powers of the points, G the filter evaluation, B^T solves the bilinear identity."""
    n = m + r - 1
    at, g = np.zeros((m, n)), np.zeros((n, r))
    for j, a in enumerate(points):
        at[:, j] = [a**i for i in range(m)]
        f = np.prod([a - b for b in points if b != a])
        g[j] = [a**k / f for k in range(r)]
    at[m - 1, n - 1] = 1
    g[n - 1, r - 1] = 1
    rows, rhs = [], []
    for i in range(m):
        for k in range(r):
            for col in range(n):
                coef = np.zeros((n, n))
                coef[:, col] = at[i, :] * g[:, k]
                rows.append(coef.ravel())
                rhs.append(1.0 if col == i + k else 0.0)
    bt = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0].reshape(n, n)
    return bt, g, at


def winograd(bt, g, at, x, w, half_v=False):
    if half_v:
        v = f16(np.einsum("tcij,lj->tcil", f16(np.einsum("ij,tcjk->tcik", bt, x)), bt))
    else:
        v = f16(f32(np.einsum("ij,tcjk,lk->tcil", bt, x, bt)))
    u = f16(f32(np.einsum("ij,kcjl,ml->kcim", g, w, g)))
    mm = f32(np.einsum("tcij,kcij->tkij", v, u))
    return f16(f32(np.einsum("ij,tkjl,ml->tkim", at, mm, at)))


def direct(m, x, w):
    out = np.zeros((x.shape[0], w.shape[0], m, m))
    for r in range(3):
        for s in range(3):
            out += np.einsum("tcij,kc->tkij", x[:, :, r : r + m, s : s + m], w[:, :, r, s])
    return out


def main():
    cases = [("F(2x2) 0,1,-1", 2, (0, 1, -1), False), ("F(2x2) 0,1,-1 half2 V", 2, (0, 1, -1), True)]
    for pts in [(0, 1, -1, 2, -2), (0, 1, -1, 0.5, -0.5), (0, 1, -1, 0.5, -2), (0, 1, -1, 2, -0.5)]:
        cases.append((f"F(4x4) {','.join(str(p) for p in pts)}", 4, pts, False))
    print(f"{'transform':<24} {'C':>4} {'relu':>5} {'rel_l2':>9} {'max/max':>9}")
    for name, m, pts, half_v in cases:
        bt, g, at = matrices(pts, m)
        for c, relu, seed in [(64, False, 1), (512, False, 2), (256, True, 3)]:
            rng = np.random.default_rng(seed)
            x = f16(rng.standard_normal((64, c, m + 2, m + 2)))
            if relu:
                x = np.maximum(x, 0)  # VGG's activations are ReLU outputs
            w = f16(rng.standard_normal((16, c, 3, 3)) * np.sqrt(2 / (9 * c)))
            y, ref = winograd(bt, g, at, x, w, half_v), direct(m, x, w)
            rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
            mx = np.abs(y - ref).max() / np.abs(ref).max()
            print(f"{name:<24} {c:>4} {str(relu):>5} {rel:>9.2e} {mx:>9.2e}")


if __name__ == "__main__":
    main()
