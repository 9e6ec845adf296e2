//! Checks of the inline-PTX primitives (kernels/ptx.cuh) through the test kernels of
//! kernels/primitives_test.cu: on emu they test the emulation against the PTX ISA
//! layouts; on a GPU they confirm that those layouts were read right.

use super::{randn_f16, small_ints, Bound, CheckRow};
use crate::reference::{compare, compare_tol, linear_fwd, Compare};
use crate::{Device, KArg, Kernel, LaunchConfig, Result, Tensor};
use half::f16;

fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "primitives_test", name }
}

const ONE_WARP: LaunchConfig = LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_bytes: 0 };

/// D = A (16 x k) * B (k x 8) + C (16 x 8), row-major, in f64.
fn matmul_ref(k: usize, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let mut d = vec![0f32; 128];
    for i in 0..16 {
        for j in 0..8 {
            let mut s = c[i * 8 + j] as f64;
            for t in 0..k {
                s += a[i * k + t] as f64 * b[t * 8 + j] as f64;
            }
            d[i * 8 + j] = s as f32;
        }
    }
    d
}

pub fn mma(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (k, name) in [(16usize, "prim_mma_m16n8k16"), (8, "prim_mma_m16n8k8")] {
        // Small integers: every product and partial sum is exact, so any order of
        // accumulation gives the exact answer. Then random normals, against a tolerance.
        for (kind, seed) in [("ints", 1u64), ("randn", 2)] {
            let [a, b, c] = mma_operands(kind, seed, [16 * k, k * 8, 128]);
            let at = Tensor::from_f32(dev, &[16, k], &a)?;
            let bt = Tensor::from_f32(dev, &[k, 8], &b)?;
            let ct = Tensor::from_host(dev, &[16, 8], &c)?;
            let mut dt = Tensor::<f32>::empty(dev, &[16, 8])?;
            dt.poison()?;
            // SAFETY: (const __half* A, const __half* B, const float* C, float* D) with
            // A 16 x k, B k x 8, C and D 16 x 8, one warp.
            unsafe { dev.launch(&kernel(name), ONE_WARP, &[at.arg(), bt.arg(), ct.arg(), dt.arg_mut()])? };
            let want = matmul_ref(k, &a, &b, &c);
            let got = dt.to_host()?;
            let (cmp, bound) = mma_compare(kind, &got, &want);
            rows.push(CheckRow::new(name, format!("16x8x{k} {kind}"), cmp, bound));
        }
    }
    Ok(rows)
}

pub fn ldmatrix(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    // Four 8x8 matrices of distinct values, matrix j at M[64 j].
    let m: Vec<f16> = (0..256).map(|i| f16::from_f32(i as f32 - 128.0)).collect();
    let mt = Tensor::from_host(dev, &[256], &m)?;
    let bits = |j: usize, r: usize, c: usize| m[64 * j + 8 * r + c].to_bits() as u32;
    for trans in [0, 1] {
        for count in [1usize, 2, 4] {
            let mut out = Tensor::<i32>::empty(dev, &[128])?;
            out.poison()?;
            // SAFETY: (const __half* M, unsigned* out, int trans, int count): M 256 halves,
            // out 128 words, one warp.
            unsafe {
                dev.launch(
                    &kernel("prim_ldmatrix"),
                    ONE_WARP,
                    &[mt.arg(), out.arg_mut(), KArg::I32(trans), KArg::I32(count as i32)],
                )?
            };
            let got = out.to_host()?;
            let (mut bad, mut first) = (0usize, None);
            for l in 0..32 {
                for j in 0..4 {
                    let want = if j >= count {
                        u32::MAX // unwritten: still poison
                    } else if trans == 0 {
                        bits(j, l / 4, 2 * (l % 4)) | bits(j, l / 4, 2 * (l % 4) + 1) << 16
                    } else {
                        bits(j, 2 * (l % 4), l / 4) | bits(j, 2 * (l % 4) + 1, l / 4) << 16
                    };
                    if got[l * 4 + j] as u32 != want {
                        bad += 1;
                        first.get_or_insert(format!(
                            "lane {l} reg {j}: got {:#010x}, want {want:#010x}",
                            got[l * 4 + j] as u32
                        ));
                    }
                }
            }
            let name = if trans == 1 { "ldmatrix.trans" } else { "ldmatrix" };
            rows.push(CheckRow {
                kernel: format!("{name} x{count}"),
                shape: "4 x 8x8 b16".into(),
                max_abs: bad as f64,
                rel_l2: 0.0,
                bound: "exact".into(),
                pass: bad == 0,
                detail: first,
            });
        }
    }
    Ok(rows)
}

pub fn cp_async(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let src: Vec<f32> = (0..192).map(|i| i as f32 + 0.5).collect();
    let st = Tensor::from_host(dev, &[192], &src)?;
    // Valid lengths that end inside a 16-byte, an 8-byte and a 4-byte chunk, and none / all.
    for n_valid in [0, 37, 64, 101, 150, 192] {
        let mut dt = Tensor::<f32>::empty(dev, &[192])?;
        dt.poison()?;
        // SAFETY: (const float* src, float* dst, int n_valid): both 192 floats, one warp.
        unsafe { dev.launch(&kernel("prim_cp_async"), ONE_WARP, &[st.arg(), dt.arg_mut(), KArg::I32(n_valid)])? };
        let want: Vec<f32> = (0..192).map(|i| if i < n_valid as usize { src[i] } else { 0.0 }).collect();
        rows.push(CheckRow::new(
            "cp.async zfill",
            format!("192 f32, {n_valid} valid"),
            compare(&dt.to_host()?, &want),
            Bound::Exact,
        ));
    }
    Ok(rows)
}

/// wgmma (kernels/wgmma.cuh, through kernels/wgmma_test.cu): D (64 x N) = A (64 x 16) B (16 x
/// N) plus C, and with scale-d off (C ignored), for N = 64 and 256, the operands in two arrangements
/// of their core matrices (K neighbours adjacent: lbo 128, sbo 256; M / N neighbours adjacent:
/// lbo = rows / 8 x 128, sbo 128), so that lbo and sbo swapped, or a wrong accumulator layout,
/// fail; with K-major operands and with M/N-major ones (the transposed instruction); and with
/// the operands starting 16 bytes past a 128-byte boundary (`+16 B`), as the halo kernels' A
/// descriptors do after a one-position tap shift. Not run where wgmma cannot (a GPU other than
/// sm_90).
pub fn wgmma(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    if !dev.has_wgmma() {
        return Ok(rows);
    }
    let kernels = [
        (64usize, "prim_wgmma_n64", "k-major"),
        (256, "prim_wgmma_n256", "k-major"),
        (64, "prim_wgmma_mn_n64", "mn-major"),
        (256, "prim_wgmma_mn_n256", "mn-major"),
    ];
    for (n, name, major) in kernels {
        let cfg = LaunchConfig { grid: (1, 1, 1), block: (128, 1, 1), shared_bytes: (2064 + 32 * n) as u32 };
        for (layout, (lbo_a, sbo_a, lbo_b, sbo_b)) in
            [("k-adjacent", (128, 256, 128, 256)), ("mn-adjacent", (1024, 128, 16 * n, 128))]
        {
            let runs = [
                ("ints", 3u64, 1, 0),
                ("randn", 4, 1, 0),
                ("ints, no C", 5, 0, 0),
                ("ints", 6, 1, 16),
                ("randn", 7, 1, 16),
            ];
            for (kind, seed, acc, off) in runs {
                let [a, bt, c] = mma_operands(kind, seed, [64 * 16, n * 16, 64 * n]);
                let (at, btt, ct, mut dt) = wgmma_tensors(dev, [&a, &bt, &c], [[64, 16], [n, 16], [64, n]])?;
                let args = [at.arg(), btt.arg(), ct.arg(), dt.arg_mut()];
                let ints = [lbo_a, sbo_a, lbo_b as i32, sbo_b, acc, off].map(KArg::I32);
                let all: Vec<KArg> = args.into_iter().chain(ints).collect();
                // SAFETY: (const __half* A, const __half* Bt, const float* C, float* D, int lbo_a,
                // int sbo_a, int lbo_b, int sbo_b, int acc, int off): A 64 x 16, Bt n x 16, C and D
                // 64 x n; one warpgroup; the strides keep A within 2048 bytes from off and B within
                // 32 n from 2048 + off, inside the 2064 + 32 n bytes.
                unsafe { dev.launch(&Kernel { module: "wgmma_test", name }, cfg, &all)? };
                let mut want = vec![0f32; 64 * n];
                for i in 0..64 {
                    for j in 0..n {
                        let mut s = if acc != 0 { c[i * n + j] as f64 } else { 0.0 };
                        for k in 0..16 {
                            s += a[i * 16 + k] as f64 * bt[j * 16 + k] as f64;
                        }
                        want[i * n + j] = s as f32;
                    }
                }
                let got = dt.to_host()?;
                let (cmp, bound) = mma_compare(kind, &got, &want);
                let at_16 = if off == 0 { "" } else { " +16 B" };
                rows.push(CheckRow::new("wgmma", format!("64x{n}x16 {major} {layout} {kind}{at_16}"), cmp, bound));
            }
        }
    }
    rows.extend(wgmma_sw128(dev)?);
    rows.extend(wgmma_sw128_grid(dev)?);
    rows.extend(wgmma_mn_sw128(dev)?);
    Ok(rows)
}

/// The 128-byte swizzle (kernels/wgmma.cuh's rule, which only the GPU can confirm): D (64 x 64) =
/// A (64 x 64) B (64 x 64) plus C, or without C, as 4 wgmma's over K-major swizzled operands, A
/// starting `shift` rows into its 72: on the pattern's 1024-byte boundary (0, 8) and off it (3, 5),
/// as a halo tile's tap shifts would start.
fn wgmma_sw128(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (128, 1, 1), shared_bytes: 1024 + 136 * 128 };
    let runs = [("ints", 31u64, 1, 0), ("randn", 32, 1, 0), ("ints, no C", 33, 0, 3), ("ints", 34, 1, 5)];
    for (kind, seed, acc, shift) in runs.into_iter().chain([("randn", 35, 1, 8)]) {
        let [a, bt, c] = mma_operands(kind, seed, [72 * 64, 64 * 64, 64 * 64]);
        let (at, btt, ct, mut dt) = wgmma_tensors(dev, [&a, &bt, &c], [[72, 64], [64, 64], [64, 64]])?;
        let args = [at.arg(), btt.arg(), ct.arg(), dt.arg_mut(), KArg::I32(acc), KArg::I32(shift)];
        // SAFETY: (const __half* A, const __half* Bt, const float* C, float* D, int acc, int shift): A
        // 72 x 64, Bt 64 x 64, C and D 64 x 64; one warpgroup; 0 <= shift <= 8 keeps A's rows within
        // its 72; up to 1023 bytes of alignment plus 136 rows of 128 bytes fit the shared memory.
        unsafe { dev.launch(&Kernel { module: "wgmma_test", name: "prim_wgmma_sw128_n64" }, cfg, &args)? };
        // A's rows shift.. times Bt^T: the FC layer's f64 reference, plus C.
        let a_rows = &a[shift as usize * 64..(shift as usize + 64) * 64];
        let mut want = linear_fwd(64, 64, 64, a_rows, &bt, None, false);
        if acc != 0 {
            want.iter_mut().zip(&c).for_each(|(w, c)| *w += c);
        }
        let got = dt.to_host()?;
        let (cmp, bound) = mma_compare(kind, &got, &want);
        rows.push(CheckRow::new("wgmma", format!("64x64x64 k-major sw128 {kind}, A from row {shift}"), cmp, bound));
    }
    Ok(rows)
}

/// K-major operands in the 128-byte swizzle whose groups of 8 rows lie a row of a 2-D halo apart
/// (stride byte offset 128 `pitch`, not 1024), as kernels/conv_wgmma_tma2d.cu's 8 x 8 pixel
/// blocks: D (64 x 64) = A B plus C, A's row 8 g + j being staged row start + pitch g + j, the
/// start on the pattern's boundary (0) and off it (a tap's shift: 43 = 1 row and 3 positions,
/// 29 at pitch 24).
fn wgmma_sw128_grid(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (kind, seed, acc, pitch, start) in
        [("ints", 36u64, 1, 40, 0), ("ints", 37, 1, 40, 43), ("randn", 38, 0, 24, 29)]
    {
        let staged = 9 * pitch as usize;
        let cfg = LaunchConfig { grid: (1, 1, 1), block: (128, 1, 1), shared_bytes: 1024 + 128 * (staged as u32 + 64) };
        let [a, bt, c] = mma_operands(kind, seed, [staged * 64, 64 * 64, 64 * 64]);
        let (at, btt, ct, mut dt) = wgmma_tensors(dev, [&a, &bt, &c], [[staged, 64], [64, 64], [64, 64]])?;
        let args = [at.arg(), btt.arg(), ct.arg(), dt.arg_mut(), KArg::I32(acc), KArg::I32(pitch), KArg::I32(start)];
        // SAFETY: (const __half* A, const __half* Bt, const float* C, float* D, int acc, int pitch,
        // int start): A 9 pitch x 64, Bt 64 x 64, C and D 64 x 64; one warpgroup; start + 7 pitch + 7
        // < 9 pitch keeps A's rows within its 9 pitch; up to 1023 bytes of alignment plus 9 pitch +
        // 64 rows of 128 bytes fit the shared memory.
        unsafe { dev.launch(&Kernel { module: "wgmma_test", name: "prim_wgmma_sw128_grid_n64" }, cfg, &args)? };
        let a_rows: Vec<f32> = (0..64)
            .flat_map(|i| {
                let r = (start + pitch * (i / 8) + i % 8) as usize;
                a[r * 64..(r + 1) * 64].to_vec()
            })
            .collect();
        let mut want = linear_fwd(64, 64, 64, &a_rows, &bt, None, false);
        if acc != 0 {
            want.iter_mut().zip(&c).for_each(|(w, c)| *w += c);
        }
        let got = dt.to_host()?;
        let (cmp, bound) = mma_compare(kind, &got, &want);
        let name = format!("64x64x64 k-major sw128 {kind}, groups {pitch} rows apart, A from row {start}");
        rows.push(CheckRow::new("wgmma", name, cmp, bound));
    }
    Ok(rows)
}

/// The M/N-major 128-byte swizzle (kernels/wgmma.cuh's reading of the PTX ISA and CUTLASS, which
/// only the GPU can confirm): D (64 x 128) = A (64 x 64) B (64 x 128) plus C, or without C, as 4
/// wgmma's over M/N-major swizzled operands, staged in two arrangements of their atoms ("boxes":
/// lbo 8192, sbo 1024, as gemm_wgmma.cu's TMA boxes lay them; "adjacent": lbo 1024, sbo 2048).
/// Both have lbo != sbo, so hardware that swapped the two offsets' roles fails every row.
fn wgmma_mn_sw128(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (128, 1, 1), shared_bytes: 1024 + 3 * 8192 };
    let runs = [("ints", 41u64, 1), ("randn", 42, 1), ("ints, no C", 43, 0)];
    for (layout, adjacent) in [("boxes", 0), ("adjacent", 1)] {
        for (kind, seed, acc) in runs {
            let seed = seed + 100 * adjacent as u64;
            let [at, b, c] = mma_operands(kind, seed, [64 * 64, 64 * 128, 64 * 128]);
            let (att, bt, ct, mut dt) = wgmma_tensors(dev, [&at, &b, &c], [[64, 64], [64, 128], [64, 128]])?;
            let args = [att.arg(), bt.arg(), ct.arg(), dt.arg_mut(), KArg::I32(acc), KArg::I32(adjacent)];
            // SAFETY: (const __half* At, const __half* B, const float* C, float* D, int acc, int adjacent):
            // At 64 x 64, B 64 x 128, C and D 64 x 128; one warpgroup; up to 1023 bytes of alignment
            // plus the operands' 8192 + 16384 bytes fit the shared memory.
            unsafe { dev.launch(&Kernel { module: "wgmma_test", name: "prim_wgmma_mn_sw128_n128" }, cfg, &args)? };
            // A = At^T times B (the FC layer's reference takes B transposed), plus C.
            let transpose = |v: &[f32], rows: usize, cols: usize| -> Vec<f32> {
                (0..rows * cols).map(|i| v[(i % rows) * cols + i / rows]).collect()
            };
            let mut want = linear_fwd(64, 64, 128, &transpose(&at, 64, 64), &transpose(&b, 64, 128), None, false);
            if acc != 0 {
                want.iter_mut().zip(&c).for_each(|(w, c)| *w += c);
            }
            let got = dt.to_host()?;
            let (cmp, bound) = mma_compare(kind, &got, &want);
            rows.push(CheckRow::new("wgmma", format!("64x128x64 mn-major sw128 {layout} {kind}"), cmp, bound));
        }
    }
    Ok(rows)
}

/// The mma and wgmma rows' operands A, B and C (`lens` elements each): random normals, or small integers
/// (A and B in -4..4, C in -8..8: exact products and sums), from seeds `seed`, + 10, + 20.
fn mma_operands(kind: &str, seed: u64, lens: [usize; 3]) -> [Vec<f32>; 3] {
    let [a, b, c] = lens;
    if kind == "randn" {
        [randn_f16(a, seed), randn_f16(b, seed + 10), randn_f16(c, seed + 20)]
    } else {
        [small_ints(a, 4, seed), small_ints(b, 4, seed + 10), small_ints(c, 8, seed + 20)]
    }
}

/// An mma or wgmma row's comparison: exact on integers, within fp32 rounding on random normals.
fn mma_compare(kind: &str, got: &[f32], want: &[f32]) -> (Compare, Bound) {
    if kind == "randn" {
        (compare_tol(got, want, 1e-4, 1e-4), Bound::Rel { rel_l2: 1e-5, max_rel: 1e-5 })
    } else {
        (compare(got, want), Bound::Exact)
    }
}

/// A, B, C and D of a wgmma row.
type WgmmaTensors = (Tensor<f16>, Tensor<f16>, Tensor<f32>, Tensor<f32>);

/// A wgmma row's tensors: A and B (fp16), C and a poisoned D (fp32; D shaped as C), each
/// `[rows, cols]` as `dims` says.
fn wgmma_tensors(dev: &Device, [a, b, c]: [&[f32]; 3], dims: [[usize; 2]; 3]) -> Result<WgmmaTensors> {
    let mut d = Tensor::<f32>::empty(dev, &dims[2])?;
    d.poison()?;
    Ok((
        Tensor::from_f32(dev, &dims[0], a)?,
        Tensor::from_f32(dev, &dims[1], b)?,
        Tensor::from_host(dev, &dims[2], c)?,
        d,
    ))
}
