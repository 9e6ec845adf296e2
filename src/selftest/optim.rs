//! The optimizer step against reference::sgd_step: one multi-tensor launch over tensors of
//! 1 to CHUNK+5 elements (one and several blocks, vector bodies and scalar tails), weights
//! with decay and biases without, with and without fp16 copies, two steps (the second with
//! momentum), at loss scale 1024. Bit-exact: the kernel repeats the reference's f64
//! arithmetic operation for operation. The fp16 copies equal the updated masters rounded.
//! Then the overflow check: clean gradients leave the flag clear; one Inf sets it, and the
//! step given the flag leaves every weight and momentum untouched. `amp_scaler`: the loss
//! scale's state machine on the device, as queued training steps run it.

use super::{randn_f16, Bound, CheckRow};
use crate::ops::{optim::CHUNK, LossScaler, OverflowFlag, Sgd, SgdParam, SgdPlan, StepVars};
use crate::reference::{self as r, compare};
use crate::{Device, Result, Tensor};
use half::f16;

struct Host {
    w: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    decay: bool,
    copy: bool,
}

struct Dev {
    w: Tensor<f32>,
    v: Tensor<f32>,
    g: Tensor<f32>,
    w16: Option<Tensor<f16>>,
}

fn params<'a>(d: &'a mut [Dev], h: &[Host]) -> Vec<SgdParam<'a>> {
    d.iter_mut()
        .zip(h)
        .map(|(d, h)| SgdParam { w: &mut d.w, v: &mut d.v, g: &d.g, w16: d.w16.as_mut(), decay: h.decay })
        .collect()
}

pub fn sgd(dev: &Device) -> Result<Vec<CheckRow>> {
    let sizes = [1usize, 3, 64, 1000, 1728, CHUNK + 5, 4099];
    let scale = 1024.0f32;
    let mut host: Vec<Host> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let s = 900 + 10 * i as u64;
            Host {
                w: randn_f16(n, s).iter().map(|v| 0.05 * v).collect(),
                v: vec![0.0; n],
                g: randn_f16(n, s + 1).iter().map(|v| v * scale * 1e-2).collect(),
                decay: i % 3 != 1,
                copy: i % 4 != 2,
            }
        })
        .collect();
    let mut devs: Vec<Dev> = host
        .iter()
        .map(|h| {
            let n = [h.w.len()];
            let w16 = if h.copy {
                let mut t = Tensor::empty(dev, &n)?;
                t.poison()?;
                Some(t)
            } else {
                None
            };
            Ok(Dev {
                w: Tensor::from_host(dev, &n, &h.w)?,
                v: Tensor::zeros(dev, &n)?,
                g: Tensor::from_host(dev, &n, &h.g)?,
                w16,
            })
        })
        .collect::<Result<_>>()?;
    let plan = SgdPlan::new(&params(&mut devs, &host))?;
    let hp = Sgd::VGG.with_scale(scale);
    let mut rows = vec![];
    for step in 1..=2 {
        plan.step(&mut params(&mut devs, &host), &hp, None)?;
        for (h, d) in host.iter_mut().zip(&devs) {
            r::sgd_step(&mut h.w, &mut h.v, &h.g, &hp, h.decay);
            let shape = format!("n={} decay={} step {step}", h.w.len(), h.decay);
            rows.push(CheckRow::new("sgd_multi_f32 w", &shape, compare(&d.w.to_host()?, &h.w), Bound::Exact));
            rows.push(CheckRow::new("sgd_multi_f32 v", &shape, compare(&d.v.to_host()?, &h.v), Bound::Exact));
            if let Some(w16) = &d.w16 {
                let want = r::f32_to_f16_round(&h.w);
                rows.push(CheckRow::new("sgd_multi_f32 w16", &shape, compare(&w16.to_f32()?, &want), Bound::Exact));
            }
        }
    }

    // Overflow: the flag, and a skipped step.
    let mut flag = OverflowFlag::new(dev)?;
    plan.check_overflow(&params(&mut devs, &host), &mut flag)?;
    let clean = flag.read()?;
    let last = devs.len() - 1;
    let mut g = host[last].g.clone();
    g[4097] = f32::INFINITY; // in the scalar tail of a 4099-element tensor
    devs[last].g.copy_from_host(&g)?;
    plan.check_overflow(&params(&mut devs, &host), &mut flag)?;
    let tail_inf = flag.read()?;
    g[4097] = 0.0;
    g[13] = f32::NAN; // in a vector body
    devs[last].g.copy_from_host(&g)?;
    plan.check_overflow(&params(&mut devs, &host), &mut flag)?;
    let body_nan = flag.read()?;
    let got = [clean, tail_inf, body_nan].map(|b| b as u8 as f32);
    rows.push(CheckRow::new("amp_check_f32", "clean, inf, nan", compare(&got, &[0.0, 1.0, 1.0]), Bound::Exact));
    plan.step(&mut params(&mut devs, &host), &hp, Some(&flag))?;
    for (h, d) in host.iter().zip(&devs) {
        let shape = format!("n={} overflow", h.w.len());
        rows.push(CheckRow::new("sgd_multi_f32 skipped w", &shape, compare(&d.w.to_host()?, &h.w), Bound::Exact));
        rows.push(CheckRow::new("sgd_multi_f32 skipped v", &shape, compare(&d.v.to_host()?, &h.v), Bound::Exact));
    }
    Ok(rows)
}

/// The loss scale on the device: queued steps (amp_check_f32, sgd_multi_f32 reading the scale
/// from the device state, amp_scaler_update) over a sequence of clean and Inf / NaN gradients
/// with growth every 2 clean steps, against reference::loss_scale_update and
/// reference::sgd_step at the scale the reference expects: bit-exact. Every other step takes
/// its learning rate from a StepVars on the device (as captured steps do; the host's is NaN
/// there, so using it would show), the rates differing from step to step.
pub fn amp_scaler(dev: &Device) -> Result<Vec<CheckRow>> {
    let n = 1000;
    let mut hw: Vec<f32> = randn_f16(n, 950).iter().map(|v| 0.05 * v).collect();
    let mut hv = vec![0.0; n];
    let mut d = [Dev {
        w: Tensor::from_host(dev, &[n], &hw)?,
        v: Tensor::zeros(dev, &[n])?,
        g: Tensor::zeros(dev, &[n])?,
        w16: None,
    }];
    let shape_host = [Host { w: vec![], v: vec![], g: vec![], decay: true, copy: false }];
    let plan = SgdPlan::new(&params(&mut d, &shape_host))?;
    let mut queued = LossScaler::with(dev, 4096.0, 2)?;
    let mut vars = StepVars::new(dev)?;
    let mut model = r::LossScaleState { scale: 4096.0, clean_steps: 0, growth_interval: 2, skipped: 0 };
    let overflow = [false, true, false, false, true, false, false, false];
    for (i, &bad) in overflow.iter().enumerate() {
        let mut g: Vec<f32> = randn_f16(n, 960 + i as u64).iter().map(|v| v * model.scale * 1e-2).collect();
        if bad {
            g[(97 * i) % n] = if i % 2 == 0 { f32::INFINITY } else { f32::NAN };
        }
        d[0].g.copy_from_host(&g)?;
        let lr = 0.01 / (1 + i) as f32;
        if i % 2 == 0 {
            queued.step_queued(&plan, &mut params(&mut d, &shape_host), Sgd::VGG.lr(lr))?;
        } else {
            vars.set([0, 0], 0, lr)?;
            queued.step_queued_at(&plan, &mut params(&mut d, &shape_host), Sgd::VGG.lr(f32::NAN), &vars)?;
        }
        let hp = Sgd::VGG.lr(lr).with_scale(model.scale);
        if r::loss_scale_update(&mut model, bad) {
            r::sgd_step(&mut hw, &mut hv, &g, &hp, true);
        }
    }
    let (last_overflow, _) = queued.sync()?.unwrap_or((true, 0.0));
    let got = [queued.scale(), queued.clean_steps() as f32, queued.skipped() as f32, last_overflow as u8 as f32];
    let want = [model.scale, model.clean_steps as f32, model.skipped as f32, 0.0];
    let shape = "8 steps, 2 overflows, growth every 2";
    Ok(vec![
        CheckRow::new("amp_scaler_update scale, clean, skipped, flag", shape, compare(&got, &want), Bound::Exact),
        CheckRow::new("sgd_multi_f32 (device scale) w", shape, compare(&d[0].w.to_host()?, &hw), Bound::Exact),
        CheckRow::new("sgd_multi_f32 (device scale) v", shape, compare(&d[0].v.to_host()?, &hv), Bound::Exact),
    ])
}
