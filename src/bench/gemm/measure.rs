//! The products of `vgg bench gemm`, one layer and pass at a time: input sets rotated beyond
//! L2, ours and cuBLAS's timed on them, then one more call of each on set 0 compared.

use super::{FcLayer, GemmBenchConfig, GemmRow, Measured, Pass};
use crate::bench::cublas::Cublas;
use crate::bench::{random_tensor, time_calls, Agreement};
use crate::ops::gemm::{self, Algo as GemmAlgo, Linear};
use crate::{reference, Device, Tensor};
use half::f16;
use rayon::prelude::*;

/// Bytes one call of `pass` touches: its two inputs and its output (and the bias).
pub(super) fn pass_bytes(s: &Linear, pass: Pass) -> usize {
    let (x, w, y) = (2 * s.m * s.k, 2 * s.n * s.k, 2 * s.m * s.n);
    match pass {
        Pass::Fwd => x + w + y + 2 * s.n,
        Pass::BwdData => y + w + x,
        Pass::BwdWeight => x + y + 4 * s.n * s.k,
    }
}

/// The rotating inputs of one layer at one batch: set `i` is `x[i]`, the layer's `w[i]`
/// ([`LayerParams`]) and `dy[i]`, with the tensors the passes do not read left out.
struct Inputs {
    sets: usize,
    x: Vec<Tensor<f16>>,
    dy: Vec<Tensor<f16>>,
}

fn pick<'a>(v: &'a [Tensor<f16>], i: usize, what: &str) -> crate::Result<&'a Tensor<f16>> {
    v.get(i).ok_or_else(|| crate::Error::Shape(format!("bench input {what} set {i} was not allocated")))
}

impl Inputs {
    fn x(&self, i: usize) -> crate::Result<&Tensor<f16>> {
        pick(&self.x, i % self.sets, "x")
    }
    fn w<'a>(&self, weights: &'a [Tensor<f16>], i: usize) -> crate::Result<&'a Tensor<f16>> {
        pick(weights, i % self.sets, "w")
    }
    fn dy(&self, i: usize) -> crate::Result<&Tensor<f16>> {
        pick(&self.dy, i % self.sets, "dy")
    }
}

/// A layer's weights and bias, shared by its batches: `w` grows to the most sets any batch
/// needs.
struct LayerParams {
    w: Vec<Tensor<f16>>,
    b: Option<Tensor<f16>>,
}

fn seed_of(layer: &FcLayer) -> u64 {
    ((layer.k * 31 + layer.n) as u64) * 1000
}

/// Input sets for `s`: enough that the bytes touched between two uses of a set exceed
/// `2 * l2_bytes` for the lightest pass, at least two, at most 64. Scales keep every output
/// near unit size in fp16: x, dy ~ N(0, 1), w ~ N(0, 1/K) (He-like), bias ~ N(0, 1/4).
fn input_sets(
    dev: &Device,
    layer: &FcLayer,
    s: Linear,
    passes: &[Pass],
    l2_bytes: usize,
    params: &mut LayerParams,
) -> crate::Result<Inputs> {
    let lightest = passes.iter().map(|&q| pass_bytes(&s, q)).min().unwrap_or(1).max(1);
    let n = (2 * l2_bytes).div_ceil(lightest).clamp(2, 64);
    let uses = |q: Pass| passes.contains(&q);
    let seed = seed_of(layer);
    let make = |shape: &[usize], scale: f32, seed: u64| random_tensor(dev, shape, scale, seed);
    if uses(Pass::Fwd) || uses(Pass::BwdData) {
        let w_scale = 1.0 / (s.k as f32).sqrt();
        while params.w.len() < n {
            let i = params.w.len() as u64;
            params.w.push(make(&[s.n, s.k], w_scale, seed + 4 * i + 1)?);
        }
    }
    if uses(Pass::Fwd) && params.b.is_none() {
        params.b = Some(make(&[s.n], 0.5, seed + 3)?);
    }
    let mut inputs = Inputs { sets: n, x: vec![], dy: vec![] };
    let batch_seed = seed + 100_000 * s.m as u64;
    for i in 0..n as u64 {
        if uses(Pass::Fwd) || uses(Pass::BwdWeight) {
            inputs.x.push(make(&[s.m, s.k], 1.0, batch_seed + 4 * i)?);
        }
        if uses(Pass::BwdData) || uses(Pass::BwdWeight) {
            inputs.dy.push(make(&[s.m, s.n], 1.0, batch_seed + 4 * i + 2)?);
        }
    }
    Ok(inputs)
}

/// A pass's output: fp16 activations, fp32 weight gradients.
enum Out {
    Half(Tensor<f16>),
    Float(Tensor<f32>),
}

impl Out {
    fn new(dev: &Device, s: &Linear, pass: Pass) -> crate::Result<Self> {
        Ok(match pass {
            Pass::Fwd => Out::Half(Tensor::empty(dev, &[s.m, s.n])?),
            Pass::BwdData => Out::Half(Tensor::empty(dev, &[s.m, s.k])?),
            Pass::BwdWeight => Out::Float(Tensor::empty(dev, &[s.n, s.k])?),
        })
    }
    fn poison(&mut self) -> crate::Result<()> {
        match self {
            Out::Half(t) => t.poison(),
            Out::Float(t) => t.poison(),
        }
    }
    fn to_f32(&self) -> crate::Result<Vec<f32>> {
        match self {
            Out::Half(t) => t.to_f32(),
            Out::Float(t) => t.to_host(),
        }
    }
}

/// Everything one call reads: the rotating inputs, the layer's weights and bias.
struct Operands<'a> {
    s: Linear,
    inputs: &'a Inputs,
    params: &'a LayerParams,
}

impl Operands<'_> {
    fn bias(&self) -> crate::Result<&Tensor<f16>> {
        self.params.b.as_ref().ok_or_else(|| crate::Error::Shape("bench bias was not allocated".into()))
    }

    /// One call of our pass on set `i`, with `algo`.
    fn ours(
        &self,
        algo: GemmAlgo,
        pass: Pass,
        i: usize,
        out: &mut Out,
        ws: Option<&mut Tensor<u8>>,
    ) -> crate::Result<()> {
        let inp = self.inputs;
        let w = || inp.w(&self.params.w, i);
        match (pass, out) {
            (Pass::Fwd, Out::Half(y)) => gemm::linear_fwd_with(algo, inp.x(i)?, w()?, Some(self.bias()?), false, y, ws),
            (Pass::BwdData, Out::Half(dx)) => gemm::linear_bwd_data_with(algo, inp.dy(i)?, w()?, dx, ws),
            (Pass::BwdWeight, Out::Float(dw)) => {
                gemm::linear_bwd_weight_with(algo, inp.x(i)?, inp.dy(i)?, dw, None, ws)
            }
            _ => Err(crate::Error::Shape(format!("bench: wrong output type for {}", pass.name()))),
        }
    }

    /// One call of cuBLAS's product for `pass` on set `i`.
    fn cublas(&self, c: &Cublas, pass: Pass, i: usize, out: &mut Out) -> crate::Result<()> {
        let inp = self.inputs;
        let w = || inp.w(&self.params.w, i);
        let r = match (pass, out) {
            (Pass::Fwd, Out::Half(y)) => c.linear_fwd(self.s, inp.x(i)?, w()?, y),
            (Pass::BwdData, Out::Half(dx)) => c.linear_bwd_data(self.s, inp.dy(i)?, w()?, dx),
            (Pass::BwdWeight, Out::Float(dw)) => c.linear_bwd_weight(self.s, inp.x(i)?, inp.dy(i)?, dw),
            _ => return Err(crate::Error::Shape(format!("bench: wrong output type for {}", pass.name()))),
        };
        r.map_err(|e| match e {
            crate::bench::cublas::CublasError::Device(e) => e,
            e => crate::Error::Kernel(e.to_string()),
        })
    }

    /// The f64 reference's output of `pass` on set 0 (emu sizes only: it runs on one core).
    fn reference(&self, pass: Pass) -> crate::Result<Vec<f32>> {
        let Linear { m, k, n } = self.s;
        let inp = self.inputs;
        Ok(match pass {
            Pass::Fwd => {
                let b = self.bias()?.to_f32()?;
                reference::linear_fwd(
                    m,
                    k,
                    n,
                    &inp.x(0)?.to_f32()?,
                    &inp.w(&self.params.w, 0)?.to_f32()?,
                    Some(&b),
                    false,
                )
            }
            Pass::BwdData => {
                reference::linear_bwd_data(m, k, n, &inp.dy(0)?.to_f32()?, &inp.w(&self.params.w, 0)?.to_f32()?)
            }
            Pass::BwdWeight => reference::linear_bwd_weight(m, k, n, &inp.x(0)?.to_f32()?, &inp.dy(0)?.to_f32()?).0,
        })
    }
}

/// `tc64x128/split4`, `tc128x128`, `tcW128x256`, `simple`: what `algo` ([`GemmAlgo::Auto`]:
/// the plan) runs for `pass`.
pub(super) fn algo_name(s: &Linear, pass: Pass, algo: GemmAlgo) -> String {
    match if algo == GemmAlgo::Auto { s.plan(pass.ops()) } else { algo } {
        GemmAlgo::TensorCore { tile, splits } => {
            let splits = s.splits_run(pass.ops(), splits);
            let tile = format!("{tile:?}");
            let tile = tile.trim_start_matches('T');
            if splits > 1 {
                format!("tc{tile}/split{splits}")
            } else {
                format!("tc{tile}")
            }
        }
        GemmAlgo::Simple => "simple".into(),
        GemmAlgo::Auto => "auto".into(),
    }
}

/// (max_rel, rel_l2) our result must meet against a trusted one: fp16 outputs are rounded
/// once (half an ulp, ~5e-4 relative), sums in another order differ far less; any indexing or
/// synchronisation bug gives errors of order 1.
const BOUNDS: (f64, f64) = (1e-2, 3e-3);

pub(super) fn bench_layer(
    dev: &Device,
    cfg: &GemmBenchConfig,
    cublas: Option<&Cublas>,
    layer: &FcLayer,
    emit: &mut dyn FnMut(GemmRow),
) {
    let mut params = LayerParams { w: vec![], b: None };
    for &batch in &cfg.batches {
        let s = Linear::new(batch, layer.k, layer.n);
        let inputs = match input_sets(dev, layer, s, &cfg.passes, cfg.l2_bytes, &mut params) {
            Ok(i) => i,
            Err(e) => {
                for &pass in &cfg.passes {
                    let mut row = GemmRow::new(layer, s, pass);
                    row.ours_error = Some(format!("allocating the inputs: {e}"));
                    emit(row);
                }
                continue;
            }
        };
        let ops = Operands { s, inputs: &inputs, params: &params };
        for &pass in &cfg.passes {
            emit(bench_pass(dev, cfg, cublas, layer, &ops, pass));
        }
    }
}

fn bench_pass(
    dev: &Device,
    cfg: &GemmBenchConfig,
    cublas: Option<&Cublas>,
    layer: &FcLayer,
    ops: &Operands<'_>,
    pass: Pass,
) -> GemmRow {
    let s = ops.s;
    let mut row = GemmRow::new(layer, s, pass);
    row.sets = ops.inputs.sets;
    row.pass_bytes = pass_bytes(&s, pass);
    let ours = match bench_ours(dev, cfg, ops, pass) {
        Ok((m, out)) => {
            row.ours = Some(m);
            Some(out)
        }
        Err(e) => {
            row.ours_error = Some(e.to_string());
            None
        }
    };
    let theirs = cublas.and_then(|c| match bench_cublas(dev, cfg, c, ops, pass) {
        Ok((m, out)) => {
            row.cublas = Some(m);
            Some(out)
        }
        Err(e) => {
            row.cublas_error = Some(e.to_string());
            None
        }
    });
    if let (Some(o), Some(c)) = (&row.ours, &row.cublas) {
        row.ratio = Some(c.ms / o.ms);
    }
    let Some(ours) = ours else {
        return row;
    };
    let (max_rel, rel_l2) = BOUNDS;
    let agreement = match theirs {
        Some(mut theirs) => {
            if pass == Pass::Fwd {
                // cuBLAS's product has no bias: add ours to its output.
                match ops.bias().and_then(|b| b.to_f32()) {
                    Ok(b) => {
                        theirs.par_chunks_mut(s.n.max(1)).for_each(|r| r.iter_mut().zip(&b).for_each(|(y, b)| *y += b))
                    }
                    Err(e) => {
                        row.cublas_error = Some(format!("reading the bias: {e}"));
                        return row;
                    }
                }
            }
            Ok(Some(Agreement::new("cublas", &ours, &theirs, max_rel, rel_l2)))
        }
        None if dev.is_emu() => {
            ops.reference(pass).map(|want| Some(Agreement::new("reference", &ours, &want, max_rel, rel_l2)))
        }
        None if !matches!(s.plan(pass.ops()), GemmAlgo::Simple) => {
            simple_output(dev, ops, pass).map(|want| Some(Agreement::new("simple", &ours, &want, max_rel, rel_l2)))
        }
        None => Ok(None),
    };
    match agreement {
        Ok(a) => row.agreement = a,
        Err(e) => row.ours_error = Some(format!("computing the output to compare with: {e}")),
    }
    row
}

/// Times our pass (the algorithm and workspace [`GemmAlgo::Auto`] plans) and returns the
/// timing and our output on set 0.
fn bench_ours(
    dev: &Device,
    cfg: &GemmBenchConfig,
    ops: &Operands<'_>,
    pass: Pass,
) -> crate::Result<(Measured, Vec<f32>)> {
    let s = ops.s;
    let algo = match (cfg.tile, cfg.splits, s.plan(pass.ops())) {
        (None, None, _) => GemmAlgo::Auto,
        (tile, splits, GemmAlgo::TensorCore { tile: t, splits: n }) => {
            GemmAlgo::TensorCore { tile: tile.unwrap_or(t), splits: splits.unwrap_or(n) }
        }
        _ => GemmAlgo::Auto,
    };
    let ws_bytes = s.workspace_bytes_with(pass.ops(), algo);
    let mut ws = Tensor::<u8>::empty(dev, &[ws_bytes.max(1)])?;
    let mut out = Out::new(dev, &s, pass)?;
    let t = time_calls(dev, &cfg.timing, |i| ops.ours(algo, pass, i, &mut out, Some(&mut ws)))?;
    out.poison()?;
    ops.ours(algo, pass, 0, &mut out, Some(&mut ws))?;
    let result = out.to_f32()?;
    Ok((Measured::new(algo_name(&s, pass, algo), t, &s, ws_bytes), result))
}

/// Times cuBLAS's product for the pass and returns the timing and its output on set 0.
fn bench_cublas(
    dev: &Device,
    cfg: &GemmBenchConfig,
    c: &Cublas,
    ops: &Operands<'_>,
    pass: Pass,
) -> crate::Result<(Measured, Vec<f32>)> {
    let s = ops.s;
    let mut out = Out::new(dev, &s, pass)?;
    let t = time_calls(dev, &cfg.timing, |i| ops.cublas(c, pass, i, &mut out))?;
    out.poison()?;
    ops.cublas(c, pass, 0, &mut out)?;
    let result = out.to_f32()?;
    let algo = if pass == Pass::BwdWeight { "gemmex f16>f32" } else { "gemmex f16" };
    Ok((Measured::new(algo.into(), t, &s, 0), result))
}

/// Our simple kernel's output of the pass on set 0: the check of the fast path when no
/// cuBLAS is at hand.
fn simple_output(dev: &Device, ops: &Operands<'_>, pass: Pass) -> crate::Result<Vec<f32>> {
    let mut out = Out::new(dev, &ops.s, pass)?;
    out.poison()?;
    ops.ours(GemmAlgo::Simple, pass, 0, &mut out, None)?;
    out.to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::L2_BYTES;
    use crate::ops::gemm::Tile as GemmTile;

    #[test]
    fn rotation_exceeds_twice_l2() {
        let s = Linear::new(64, 4096, 1000);
        let lightest = Pass::ALL.iter().map(|&p| pass_bytes(&s, p)).min().unwrap();
        let n = (2 * L2_BYTES).div_ceil(lightest).clamp(2, 64);
        assert!(n * lightest >= 2 * L2_BYTES && n < 64, "{n} sets of {lightest} bytes");
    }

    #[test]
    fn algo_names() {
        assert!(algo_name(&Linear::new(64, 25088, 4096), Pass::Fwd, GemmAlgo::Auto).starts_with("tc64x128"));
        assert_eq!(algo_name(&Linear::new(4, 16, 10), Pass::Fwd, GemmAlgo::Auto), "simple");
        let wgmma = GemmAlgo::TensorCore { tile: GemmTile::W128x256, splits: 2 };
        assert_eq!(algo_name(&Linear::new(64, 4096, 4096), Pass::Fwd, wgmma), "tcW128x256/split2");
    }
}
