//! `vgg bench copy`: the global -> shared copy forms of our tensor-core kernels, in GB/s.

use anyhow::{bail, Context, Result};
use vgg_cuda::bench::copy::{bench_case, CopyCase, CopyMethod, CopyRow};
use vgg_cuda::{atomic, Device};

#[derive(clap::Args)]
pub(crate) struct BenchCopyArgs {
    /// cuda, cuda:N or emu (emu: one small matrix, a correctness run).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Comma-separated cases: l2 (16 MiB of 32 KiB rows, re-read from L2), dram (1 GiB of the
    /// same rows, read once), l2-contig (16 MiB, each tile contiguous) [default: all three; on
    /// emu one small matrix].
    #[arg(long)]
    cases: Option<String>,
    /// Comma-separated methods: cgz (cp.async.cg with a src-size operand, our kernels' form),
    /// cg (without one), ca (cp.async.ca, through L1), ldg (ld.global + st.shared), bulk
    /// (cp.async.bulk, the TMA engine, 128 bytes a copy), tma (cp.async.bulk.tensor, a
    /// swizzled 64 x 256 box a tile); the last two sm_90 only [default: all six where the GPU
    /// has the TMA engine, else the first four].
    #[arg(long)]
    methods: Option<String>,
    /// Write the rows as JSON to this file (rewritten after every row).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(crate) fn bench_copy_cmd(a: BenchCopyArgs) -> Result<()> {
    let methods = match &a.methods {
        Some(list) => {
            let m = list.split(',').map(|m| CopyMethod::parse(m.trim())).collect::<Result<Vec<_>, _>>();
            Some(m.with_context(|| format!("--methods {list}"))?)
        }
        None => None,
    };
    let emu = a.device == "emu";
    let dev_cases = |grid| CopyCase::defaults(emu, grid);
    if let Some(c) = &a.cases {
        let known: Vec<String> = dev_cases(1).into_iter().map(|c| c.name).collect();
        if let Some(bad) = c.split(',').find(|n| !known.iter().any(|k| k == n.trim())) {
            bail!("--cases {c}: unknown case `{bad}` (cases here: {})", known.join(", "));
        }
    }
    if let Some(path) = &a.json {
        atomic::check_writable(path).context("--json")?;
    }
    let dev = Device::by_name(&a.device).with_context(|| format!("bench copy on `{}`", a.device))?;
    // Two blocks an SM (a cp.async block holds 96 KiB of shared memory); 3 on emu, so that the
    // blocks take unequal numbers of tiles.
    let grid = if dev.is_emu() { 3 } else { 2 * dev.multiprocessors() };
    let methods =
        methods.unwrap_or_else(|| CopyMethod::ALL.into_iter().filter(|m| dev.has_wgmma() || !m.engine()).collect());
    let cases: Vec<CopyCase> = dev_cases(grid)
        .into_iter()
        .filter(|c| a.cases.as_ref().is_none_or(|want| want.split(',').any(|n| n.trim() == c.name)))
        .collect();
    println!("bench copy on {}: {grid} blocks of 256 threads, 32 KiB tiles", dev.name());
    println!("{}", CopyRow::header());
    let mut rows: Vec<CopyRow> = vec![];
    for case in &cases {
        let mut json_error = None;
        bench_case(&dev, case, &methods, grid, |row| {
            println!("{}", row.line());
            rows.push(row.clone());
            if let Some(path) = &a.json {
                let write = serde_json::to_vec_pretty(&rows).map_err(anyhow::Error::from);
                if let Err(e) = write.and_then(|b| Ok(atomic::write(path, &b)?)) {
                    json_error.get_or_insert(e);
                }
            }
        })
        .with_context(|| format!("case {}", case.name))?;
        if let Some(e) = json_error {
            return Err(e.context("writing --json"));
        }
    }
    let bad = rows.iter().filter(|r| r.error.is_some() || !r.check_ok).count();
    if bad > 0 {
        bail!("{bad} of {} copy rows failed or copied wrong bytes", rows.len());
    }
    Ok(())
}
