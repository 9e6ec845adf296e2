//! Checks of the GEMM family (kernels/gemm.cu, kernels/gemm_wgmma.cu where the device has
//! wgmma, kernels/gemm_simple.cu): the three passes of a linear layer and of a 1x1
//! convolution, on the tensor-core kernels (the tile and split the planner picks, plus forced
//! ones so that every tile runs split and unsplit in every pass) and on the simple twin,
//! against the f64 reference of the same fp16 inputs (src/reference).
//!
//! Shapes: edge cases first (M = 1, 7, 64, 130: ragged against every tile; K, N of 8, 24, 136,
//! 512: part of one 64-deep k-tile, three, eight (deep enough to split); 384 x 512 x 264,
//! ragged against the 192- and 256-wide tiles; N = 10, which only the simple kernel takes),
//! small enough that the emulator runs them all in seconds. On a GPU also the VGG classifier
//! at batch 64 (25088 -> 4096, 4096 -> 4096, 4096 -> 1000) and 256 (25088 -> 4096, 4096 ->
//! 4096; other tiles and splits), checked on a
//! sample of 64 output columns (fwd, bwd_data) or rows (bwd_weight) spread over every tile,
//! all M rows of them: the full f64 reference would be 6.6e9 multiply-adds a pass.
//!
//! Bounds: fp16 outputs rel_l2 <= 2e-3 and max |err| <= 4e-3 max |ref| against the reference
//! rounded to fp16; fp32 outputs (dW, db) 1e-4. Small-integer data is exact on every path.
//! Determinism: every pass three times (emu: in index order, in reverse, and in a random
//! schedule), bit-identical.

use super::{randn_f16, small_ints, Bound, CheckRow, GuardedWorkspace};
use crate::ops::gemm::{self, Algo, Linear, Pass, Tile};
use crate::reference::{self as r, compare_tol};
use crate::{Device, Result, Schedule, Tensor};

const F16_BOUND: Bound = Bound::Rel { rel_l2: 2e-3, max_rel: 4e-3 };
const F32_BOUND: Bound = Bound::Rel { rel_l2: 1e-4, max_rel: 1e-4 };

/// The edge-case shapes `(M, K, N)`, run on every device: M = 1, 7, 64 (the 64x128 tile) by
/// K, N = 8, 24, 136, 512; then M past one 128-row tile (ragged, and three tiles), and N = 10.
fn shapes() -> Vec<(usize, usize, usize)> {
    let dims = [8, 24, 136, 512];
    let mut v: Vec<_> = [1, 7, 64]
        .into_iter()
        .flat_map(|m| dims.into_iter().flat_map(move |k| dims.into_iter().map(move |n| (m, k, n))))
        .collect();
    v.extend([(130, 24, 136), (384, 512, 264), (1152, 16, 8), (7, 512, 10)]);
    v
}

/// A forced variant: the shape (M, K, N) it runs on and the algorithm.
type Forced = ((usize, usize, usize), Algo);

/// Extra algorithms run on some shapes, so that each pass runs every tile with and without
/// split whatever the planner picks: M = 384, K = 512, N = 264 is ragged against the 192- and
/// 256-wide tiles in every pass and has more k-tiles (5 to 8) than any ring has buffers.
const FORCED: &[Forced] = &[
    ((7, 136, 24), Algo::TensorCore { tile: Tile::T128x128, splits: 3 }),
    ((64, 136, 512), Algo::TensorCore { tile: Tile::T64x128, splits: 1 }),
    ((130, 24, 136), Algo::TensorCore { tile: Tile::T64x128, splits: 1 }),
    ((130, 24, 136), Algo::TensorCore { tile: Tile::T128x256, splits: 1 }),
    ((1, 512, 512), Algo::TensorCore { tile: Tile::T128x128, splits: 1 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::T128x256, splits: 3 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::T128x192, splits: 1 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::T128x192, splits: 2 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::T64x128, splits: 2 }),
];

/// The wgmma tile, where the device has wgmma: ragged rows and columns (130 x 136, 384 x 264:
/// every pass's tile edges), a reduction of one partial k-tile (K = 24), and split.
const FORCED_WGMMA: &[Forced] = &[
    ((130, 24, 136), Algo::TensorCore { tile: Tile::W128x256, splits: 1 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::W128x256, splits: 1 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::W128x256, splits: 3 }),
];

/// The TMA tile, every pass, where the device has wgmma: rows and columns ragged against its
/// boxes (130 x 136; M = 1 and 64, whose boxes are mostly zero fill), reductions shorter than a
/// box (fwd's K = 24, bwd_weight's M = 1) or ending in a partial one (K = 136, bwd_data's N =
/// 136 and 264, bwd_weight's M = 130), more k-tiles than the ring has buffers (K = 512, N =
/// 512), and split (bwd_weight's M = 1 in 2: a split of no k-tiles).
const FORCED_TMA: &[Forced] = &[
    ((130, 24, 136), Algo::TensorCore { tile: Tile::WT128x256, splits: 1 }),
    ((64, 136, 512), Algo::TensorCore { tile: Tile::WT128x256, splits: 1 }),
    ((1, 512, 512), Algo::TensorCore { tile: Tile::WT128x256, splits: 2 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::WT128x256, splits: 1 }),
    ((384, 512, 264), Algo::TensorCore { tile: Tile::WT128x256, splits: 3 }),
];

/// One pass's inputs, uploaded, and its reference outputs.
struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

impl Data {
    fn new(s: Linear, ints: bool, seed: u64) -> Self {
        let gen = |len, i: u64| if ints { small_ints(len, 2, seed + i) } else { randn_f16(len, seed + i) };
        Self { x: gen(s.m * s.k, 0), w: gen(s.n * s.k, 1), b: gen(s.n, 2), dy: gen(s.m * s.n, 3) }
    }
}

fn label(s: Linear) -> String {
    format!("M{} K{} N{}", s.m, s.k, s.n)
}

fn pass_name(p: Pass) -> &'static str {
    match p {
        Pass::Fwd => "fwd",
        Pass::BwdData => "bwd_data",
        Pass::BwdWeight => "bwd_weight",
    }
}

/// Row label of an algorithm as it runs (Auto resolved).
fn algo_name(s: Linear, p: Pass, algo: Algo) -> String {
    match if algo == Algo::Auto { s.plan(p) } else { algo } {
        Algo::TensorCore { tile, splits } => {
            let t = format!("{tile:?}");
            format!("gemm_{}_f16_{} split {splits}", pass_name(p), t.trim_start_matches('T'))
        }
        _ => format!("gemm_simple {}", pass_name(p)),
    }
}

fn workspace(dev: &Device, s: Linear, p: Pass, algo: Algo) -> Result<GuardedWorkspace> {
    GuardedWorkspace::new(dev, s.workspace_bytes_with(p, algo))
}

/// Device outputs of the three passes: `[y, dx, dw, db]`.
fn run_all(dev: &Device, s: Linear, algo: Algo, d: &Data) -> Result<[Vec<f32>; 4]> {
    let x = Tensor::from_f32(dev, &[s.m, s.k], &d.x)?;
    let w = Tensor::from_f32(dev, &[s.n, s.k], &d.w)?;
    let b = Tensor::from_f32(dev, &[s.n], &d.b)?;
    let dy = Tensor::from_f32(dev, &[s.m, s.n], &d.dy)?;
    let mut y = Tensor::empty(dev, &[s.m, s.n])?;
    let mut dx = Tensor::empty(dev, &[s.m, s.k])?;
    let mut dw = Tensor::<f32>::empty(dev, &[s.n, s.k])?;
    let mut db = Tensor::<f32>::empty(dev, &[s.n])?;
    y.poison()?;
    dx.poison()?;
    dw.poison()?;
    db.poison()?;
    let what = |p: Pass| format!("{algo:?} {p:?} M{} K{} N{}", s.m, s.k, s.n);
    let mut ws = workspace(dev, s, Pass::Fwd, algo)?;
    gemm::linear_fwd_with(algo, &x, &w, Some(&b), true, &mut y, Some(&mut ws.ws))?;
    ws.check(&what(Pass::Fwd))?;
    let mut ws = workspace(dev, s, Pass::BwdData, algo)?;
    gemm::linear_bwd_data_with(algo, &dy, &w, &mut dx, Some(&mut ws.ws))?;
    ws.check(&what(Pass::BwdData))?;
    let mut ws = workspace(dev, s, Pass::BwdWeight, algo)?;
    gemm::linear_bwd_weight_with(algo, &x, &dy, &mut dw, Some(&mut db), Some(&mut ws.ws))?;
    ws.check(&what(Pass::BwdWeight))?;
    Ok([y.to_f32()?, dx.to_f32()?, dw.to_host()?, db.to_host()?])
}

/// The f64 reference of [`run_all`]: fp16 outputs rounded to fp16.
fn reference(s: Linear, d: &Data) -> [Vec<f32>; 4] {
    let y = r::linear_fwd(s.m, s.k, s.n, &d.x, &d.w, Some(&d.b), true);
    let dx = r::linear_bwd_data(s.m, s.k, s.n, &d.dy, &d.w);
    let (dw, db) = r::linear_bwd_weight(s.m, s.k, s.n, &d.x, &d.dy);
    [r::f32_to_f16_round(&y), r::f32_to_f16_round(&dx), dw, db]
}

/// The outputs of [`run_all`] in order: pass, name, bound.
const OUTPUTS: [(Pass, &str, Bound); 4] = [
    (Pass::Fwd, "y", F16_BOUND),
    (Pass::BwdData, "dx", F16_BOUND),
    (Pass::BwdWeight, "dw", F32_BOUND),
    (Pass::BwdWeight, "db", F32_BOUND),
];

fn rows_for(s: Linear, algo: Algo, got: &[Vec<f32>; 4], want: &[Vec<f32>; 4], ints: bool) -> Vec<CheckRow> {
    (0..4).map(|i| row_for(s, algo, i, &got[i], &want[i], ints)).collect()
}

/// The row of output `i` (of [`OUTPUTS`]).
fn row_for(s: Linear, algo: Algo, i: usize, got: &[f32], want: &[f32], ints: bool) -> CheckRow {
    let (p, what, bound) = OUTPUTS[i];
    let name = format!("{} {what}", algo_name(s, p, algo));
    let shape = format!("{}{}", label(s), if ints { " ints" } else { "" });
    if ints {
        CheckRow::new(&name, shape, r::compare(got, want), Bound::Exact)
    } else {
        let tol = if i < 2 { 2e-3 } else { 1e-4 };
        CheckRow::new(&name, shape, compare_tol(got, want, tol, tol), bound)
    }
}

/// The linear layer: every shape, Auto and the simple twin, random normals and integers,
/// plus the forced tensor-core variants but the TMA tile's; on a GPU also the VGG classifier.
pub fn linear(dev: &Device) -> Result<Vec<CheckRow>> {
    let wgmma = if dev.has_wgmma() { FORCED_WGMMA } else { &[] };
    let mut rows = forced_rows(dev, &[FORCED, wgmma], true)?;
    if !dev.is_emu() {
        let vgg = [(64, 25088, 4096), (64, 4096, 4096), (64, 4096, 1000), (256, 25088, 4096), (256, 4096, 4096)];
        for (m, k, n) in vgg {
            rows.extend(vgg_sampled(dev, Linear::new(m, k, n))?);
        }
    }
    Ok(rows)
}

/// The TMA tile's forced rows (sm_90), a check of their own that `vgg selftest` runs last: a copy
/// that never lands traps on the GPU (kernels/bulk.cuh), which loses the process's CUDA context
/// for every row after it.
pub fn linear_tma(dev: &Device) -> Result<Vec<CheckRow>> {
    if !dev.has_wgmma() {
        return Ok(vec![]);
    }
    forced_rows(dev, &[FORCED_TMA], false)
}

/// The rows of every shape with forced variants in `sets` (each shape's data seeded by its place
/// in the list), after Auto's and the simple twin's where `base`; shapes with none are skipped
/// unless `base`.
fn forced_rows(dev: &Device, sets: &[&[Forced]], base: bool) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    for (i, (m, k, n)) in shapes().into_iter().enumerate() {
        let s = Linear::new(m, k, n);
        let forced: Vec<Algo> =
            sets.iter().flat_map(|set| set.iter()).filter(|f| f.0 == (m, k, n)).map(|f| f.1).collect();
        if !base && forced.is_empty() {
            continue;
        }
        // Auto is the simple kernel where N or K is not a multiple of 8: run it once.
        let simple = if s.plan(Pass::Fwd) == Algo::Simple { None } else { Some(Algo::Simple) };
        let base_algos: Vec<Algo> = if base { [Algo::Auto].into_iter().chain(simple).collect() } else { vec![] };
        for ints in [false, true] {
            let d = Data::new(s, ints, 100 * i as u64 + 10 * ints as u64);
            let want = reference(s, &d);
            for &algo in base_algos.iter().chain(&forced) {
                rows.extend(rows_for(s, algo, &run_all(dev, s, algo, &d)?, &want, ints));
            }
        }
    }
    Ok(rows)
}

/// `cnt` indices spread over `0..len`, including both ends and tile borders' neighbours.
fn sample(len: usize, cnt: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..cnt).map(|j| j * (len - 1) / (cnt - 1).max(1)).collect();
    v.extend([127, 128, 129].iter().filter(|&&i| i < len));
    v.sort_unstable();
    v.dedup();
    v
}

/// A large shape checked on a sample of output columns (fwd, bwd_data) or weight rows
/// (bwd_weight, db), all M rows of them, with the planner's algorithm.
fn vgg_sampled(dev: &Device, s: Linear) -> Result<Vec<CheckRow>> {
    let Linear { m, k, n } = s;
    let d = Data::new(s, false, 7);
    let got = run_all(dev, s, Algo::Auto, &d)?;
    // Reference sub-problems: column j of Y needs row j of W; column j of dX needs column j of
    // W; row o of dW needs column o of dY.
    let (cols_n, cols_k) = (sample(n, 64), sample(k, 64));
    let w_rows: Vec<f32> = cols_n.iter().flat_map(|&o| d.w[o * k..(o + 1) * k].to_vec()).collect();
    let b_sub: Vec<f32> = cols_n.iter().map(|&o| d.b[o]).collect();
    let w_cols: Vec<f32> =
        (0..n).flat_map(|o| cols_k.iter().map(move |&j| (o, j))).map(|(o, j)| d.w[o * k + j]).collect();
    let dy_cols: Vec<f32> =
        (0..m).flat_map(|i| cols_n.iter().map(move |&o| (i, o))).map(|(i, o)| d.dy[i * n + o]).collect();
    let (sn, sk) = (cols_n.len(), cols_k.len());
    let want_y = r::f32_to_f16_round(&r::linear_fwd(m, k, sn, &d.x, &w_rows, Some(&b_sub), true));
    let want_dx = r::f32_to_f16_round(&r::linear_bwd_data(m, sk, n, &d.dy, &w_cols));
    let (want_dw, want_db) = r::linear_bwd_weight(m, k, sn, &d.x, &dy_cols);
    let pick = |v: &[f32], width: usize, idx: &[usize]| -> Vec<f32> {
        (0..v.len() / width).flat_map(|i| idx.iter().map(move |&j| v[i * width + j])).collect()
    };
    let got_y = pick(&got[0], n, &cols_n);
    let got_dx = pick(&got[1], k, &cols_k);
    let got_dw: Vec<f32> = cols_n.iter().flat_map(|&o| got[2][o * k..(o + 1) * k].to_vec()).collect();
    let got_db: Vec<f32> = cols_n.iter().map(|&o| got[3][o]).collect();
    let shape = format!("{} (sampled)", label(s));
    let row = |p: Pass, what: &str, g: &[f32], w: &[f32], tol: f64, b: Bound| {
        CheckRow::new(&format!("{} {what}", algo_name(s, p, Algo::Auto)), shape.clone(), compare_tol(g, w, tol, tol), b)
    };
    Ok(vec![
        row(Pass::Fwd, "y", &got_y, &want_y, 2e-3, F16_BOUND),
        row(Pass::BwdData, "dx", &got_dx, &want_dx, 2e-3, F16_BOUND),
        row(Pass::BwdWeight, "dw", &got_dw, &want_dw, 1e-4, F32_BOUND),
        row(Pass::BwdWeight, "db", &got_db, &want_db, 1e-4, F32_BOUND),
    ])
}

/// 1x1 convolutions over NHWC (config C's conv4_3-like layers, reduced): the same GEMM over
/// N*H*W pixels, against the reference's conv1x1_*. The wgrad reduction over 2*9*9 = 162
/// pixels is long enough to split, and its bias gradient runs in chunks when M > 1024.
pub fn conv1x1(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let shapes: &[[usize; 5]] = &[[1, 3, 5, 8, 16], [2, 9, 9, 24, 64], [2, 24, 24, 16, 8]];
    for (i, &[n, h, wd, c, k]) in shapes.iter().enumerate() {
        let p = n * h * wd;
        let s = Linear::conv1x1(n, h, wd, c, k);
        let d = Data::new(s, false, 500 + 10 * i as u64);
        let x = Tensor::from_f32(dev, &[n, h, wd, c], &d.x)?;
        let w = Tensor::from_f32(dev, &[k, 1, 1, c], &d.w)?;
        let b = Tensor::from_f32(dev, &[k], &d.b)?;
        let dy = Tensor::from_f32(dev, &[n, h, wd, k], &d.dy)?;
        let mut y = Tensor::empty(dev, &[n, h, wd, k])?;
        let mut dx = Tensor::empty(dev, &[n, h, wd, c])?;
        let mut dw = Tensor::<f32>::empty(dev, &[k, 1, 1, c])?;
        let mut db = Tensor::<f32>::empty(dev, &[k])?;
        y.poison()?;
        dx.poison()?;
        dw.poison()?;
        db.poison()?;
        let what = |p: Pass| format!("conv1x1 {p:?} {n}x{h}x{wd}x{c} -> {k}");
        let mut ws = workspace(dev, s, Pass::Fwd, Algo::Auto)?;
        gemm::conv1x1_fwd(&x, &w, Some(&b), false, &mut y, Some(&mut ws.ws))?;
        ws.check(&what(Pass::Fwd))?;
        let mut ws = workspace(dev, s, Pass::BwdData, Algo::Auto)?;
        gemm::conv1x1_dgrad(&dy, &w, &mut dx, Some(&mut ws.ws))?;
        ws.check(&what(Pass::BwdData))?;
        let mut ws = workspace(dev, s, Pass::BwdWeight, Algo::Auto)?;
        gemm::conv1x1_wgrad(&x, &dy, &mut dw, Some(&mut db), Some(&mut ws.ws))?;
        ws.check(&what(Pass::BwdWeight))?;
        let want_y = r::f32_to_f16_round(&r::conv1x1_fprop(p, c, k, &d.x, &d.w, Some(&d.b), false));
        let want_dx = r::f32_to_f16_round(&r::conv1x1_dgrad(p, c, k, &d.dy, &d.w));
        let (want_dw, want_db) = r::conv1x1_wgrad(p, c, k, &d.x, &d.dy);
        let shape = format!("{n}x{h}x{wd}x{c} -> {k}");
        let name = |pass| algo_name(s, pass, Algo::Auto).replace("gemm_", "conv1x1 gemm_");
        for (what, pass, g, w, tol, bound) in [
            ("y", Pass::Fwd, y.to_f32()?, want_y, 2e-3, F16_BOUND),
            ("dx", Pass::BwdData, dx.to_f32()?, want_dx, 2e-3, F16_BOUND),
            ("dw", Pass::BwdWeight, dw.to_host()?, want_dw, 1e-4, F32_BOUND),
            ("db", Pass::BwdWeight, db.to_host()?, want_db, 1e-4, F32_BOUND),
        ] {
            rows.push(CheckRow::new(
                &format!("{} {what}", name(pass)),
                shape.clone(),
                compare_tol(&g, &w, tol, tol),
                bound,
            ));
        }
    }
    Ok(rows)
}

/// Every pass three times, bit-identical: on emu in index order, in reverse (each cp.async
/// lands as late as its wait allows, so a pipeline that waits for too few groups reads stale
/// shared memory) and in a seeded random schedule (a missing barrier or a race shows as a
/// difference); on a GPU simply three times. Auto on three shapes, then every tile, split and
/// unsplit, on one deep ragged shape.
pub fn determinism(dev: &Device) -> Result<Vec<CheckRow>> {
    let mut rows = vec![];
    let deep = (384, 512, 264);
    let cases = [(64, 512, 24), (130, 24, 136), (1152, 16, 8)].map(|s| (s, Algo::Auto)).into_iter().chain(
        [(Tile::T128x256, 1), (Tile::T128x192, 2), (Tile::T128x128, 1), (Tile::T64x128, 3), (Tile::W128x256, 2)]
            .into_iter()
            .filter(|(tile, _)| *tile != Tile::W128x256 || dev.has_wgmma())
            .map(|(tile, splits)| (deep, Algo::TensorCore { tile, splits })),
    );
    for ((m, k, n), algo) in cases {
        let s = Linear::new(m, k, n);
        let d = Data::new(s, false, 900);
        let runs = if dev.is_emu() {
            let mut v = vec![];
            for sched in [Schedule::Index, Schedule::Reverse, Schedule::Random(0x5eed)] {
                let d1 = Device::emu();
                d1.set_schedule(sched);
                v.push(run_all(&d1, s, algo, &d)?);
            }
            v
        } else {
            vec![run_all(dev, s, algo, &d)?, run_all(dev, s, algo, &d)?, run_all(dev, s, algo, &d)?]
        };
        let how = if dev.is_emu() { "index vs reverse, random schedule" } else { "run three times" };
        for (i, (pass, what)) in
            [(Pass::Fwd, "y"), (Pass::BwdData, "dx"), (Pass::BwdWeight, "dw"), (Pass::BwdWeight, "db")]
                .into_iter()
                .enumerate()
        {
            let a = &runs[0][i];
            let differ = |b: &[f32]| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            let bad: usize = runs[1..].iter().map(|r| differ(&r[i])).sum();
            let first = runs[1..].iter().find_map(|r| {
                let j = a.iter().zip(&r[i]).position(|(x, y)| x.to_bits() != y.to_bits())?;
                Some(format!("first at {j}: {} vs {}", a[j], r[i][j]))
            });
            rows.push(CheckRow {
                kernel: format!("{} {what} bits", algo_name(s, pass, algo)),
                shape: format!("{} {how}", label(s)),
                max_abs: bad as f64,
                rel_l2: 0.0,
                bound: "bit-identical".into(),
                pass: bad == 0,
                detail: first.map(|f| format!("{bad} differ, {f}")),
            });
        }
    }
    Ok(rows)
}
