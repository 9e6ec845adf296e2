//! Softmax cross-entropy on emu: the selftest check against the reference, bit-identity
//! across schedules, the bad-label report (deferred, sticky, naming the row), the
//! forward-only mode, and shape errors; the same for evaluation's `softmax_fwd`, with
//! infinite, NaN and out-of-exp-range logits.

mod two_schedules;

use half::f16;
use two_schedules::{assert_check_passes, assert_schedule_independent, bits16, bits32, values};
use vgg_cuda::{ops, reference as r, Device, Error, Tensor};

#[test]
fn softmax_xent_matches_reference() {
    assert_check_passes("softmax_xent");
}

#[test]
fn softmax_xent_is_schedule_independent() {
    for (batch, classes) in [(5, 1000), (3, 37)] {
        assert_schedule_independent(&format!("softmax_xent {batch}x{classes}"), |dev| {
            let z = values(batch * classes, 1, 8.0);
            let labels: Vec<i32> = (0..batch as i32).map(|i| (i * 7919) % classes as i32).collect();
            let zt = Tensor::from_f32(dev, &[batch, classes], &z).unwrap();
            let lt = Tensor::from_host(dev, &[batch], &labels).unwrap();
            let mut dz = Tensor::<f16>::empty(dev, &[batch, classes]).unwrap();
            dz.poison().unwrap();
            let mut bufs = ops::XentBuffers::new(dev, batch).unwrap();
            ops::softmax_xent(&zt, &lt, Some(&mut dz), 128.0, &mut bufs).unwrap();
            let s = bufs.check().unwrap();
            (bits16(&dz), s.loss.to_bits(), s.top1, s.top5)
        });
    }
}

#[test]
fn softmax_fwd_matches_reference() {
    assert_check_passes("softmax_fwd");
}

#[test]
fn softmax_fwd_is_schedule_independent() {
    for (rows, classes) in [(5, 1000), (3, 37)] {
        assert_schedule_independent(&format!("softmax_fwd {rows}x{classes}"), |dev| {
            let z = values(rows * classes, 4, 8.0);
            let mut p = Tensor::<f32>::empty(dev, &[rows, classes]).unwrap();
            p.poison().unwrap();
            ops::softmax_fwd(&Tensor::from_f32(dev, &[rows, classes], &z).unwrap(), &mut p).unwrap();
            let fp16 = bits32(&p);
            ops::softmax_fwd(&Tensor::from_host(dev, &[rows, classes], &z).unwrap(), &mut p).unwrap();
            (fp16, bits32(&p))
        });
    }
}

#[test]
fn softmax_fwd_extremes() {
    // Logits past fp32's exp range, a -inf class (probability 0), one NaN (its row NaN),
    // and a single class (probability 1).
    let dev = Device::emu();
    let z = [1000.0, 999.0, f32::NEG_INFINITY, -1000.0, 0.0, f32::NAN, 1.0, 2.0];
    let mut p = Tensor::<f32>::empty(&dev, &[2, 4]).unwrap();
    ops::softmax_fwd(&Tensor::from_host(&dev, &[2, 4], &z).unwrap(), &mut p).unwrap();
    let p = p.to_host().unwrap();
    let want = r::softmax_fwd(1, 4, &z[..4]);
    assert!(p[..4].iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-6 * w), "{p:?} vs {want:?}");
    assert_eq!((p[2], p[3]), (0.0, 0.0));
    assert!(p[4..].iter().all(|v| v.is_nan()), "{p:?}");
    let mut one = Tensor::<f32>::empty(&dev, &[3, 1]).unwrap();
    ops::softmax_fwd(&Tensor::<f16>::from_f32(&dev, &[3, 1], &[-7.0, 0.0, 6e4]).unwrap(), &mut one).unwrap();
    assert_eq!(one.to_host().unwrap(), vec![1.0; 3]);
    let e = ops::softmax_fwd(&Tensor::<f32>::zeros(&dev, &[3, 2]).unwrap(), &mut one).unwrap_err();
    assert!(e.to_string().contains("probs (logits' shape) must have shape [3, 2], got [3, 1]"), "{e}");
    let mut transposed = Tensor::<f32>::empty(&dev, &[2, 3]).unwrap();
    let e = ops::softmax_fwd(&Tensor::<f32>::zeros(&dev, &[3, 2]).unwrap(), &mut transposed).unwrap_err();
    assert!(e.to_string().contains("got [2, 3]"), "{e}");
    let e = ops::softmax_fwd(&Tensor::<f32>::zeros(&dev, &[3]).unwrap(), &mut one).unwrap_err();
    assert!(e.to_string().contains("[rows, classes]"), "{e}");
}

#[test]
fn bad_label_is_reported_with_its_row() {
    let dev = Device::emu();
    let (batch, classes) = (4, 1000);
    let z = values(batch * classes, 2, 4.0);
    let zt = Tensor::from_f32(&dev, &[batch, classes], &z).unwrap();
    let lt = Tensor::from_host(&dev, &[batch], &[3, 1000, 7, -2]).unwrap();
    let mut dz = Tensor::<f16>::empty(&dev, &[batch, classes]).unwrap();
    dz.poison().unwrap();
    let mut bufs = ops::XentBuffers::new(&dev, batch).unwrap();
    ops::softmax_xent(&zt, &lt, Some(&mut dz), 1.0, &mut bufs).unwrap();

    // The read is deferred: a later clean launch does not hide the bad one.
    let good = Tensor::from_host(&dev, &[batch], &[0, 1, 2, 3]).unwrap();
    ops::softmax_xent(&zt, &good, None, 1.0, &mut bufs).unwrap();
    let e = bufs.check().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Invalid(_)), "{msg}");
    assert!(msg.contains("label 1000 of row 1 is not in 0..1000") && msg.contains("2 bad rows"), "{msg}");

    // Bad rows get a NaN gradient (a training step's overflow check then skips the update);
    // good rows the reference's.
    let got = dz.to_f32().unwrap();
    assert!(got[classes..2 * classes].iter().chain(&got[3 * classes..]).all(|v| v.is_nan()));
    assert!(got[2 * classes..3 * classes].iter().all(|v| v.is_finite()));
    let want = r::softmax_xent_bwd(1, classes, &r::f32_to_f16_round(&z[..classes]), &[3]);
    let want: Vec<f32> = want.iter().map(|v| v / batch as f32).collect();
    let c = r::compare_tol(&got[..classes], &r::f32_to_f16_round(&want), 1e-7, 2e-3);
    assert!(c.first_bad.is_none(), "row 0 gradient: {c}");

    // check leaves the report in place; check_once reports it once and clears it.
    assert!(bufs.check().is_err());
    assert!(matches!(bufs.check_once(), Err(Error::Invalid(_))));
    assert_eq!(bufs.check().unwrap().rows, 0, "check_once cleared the status");
    ops::softmax_xent(&zt, &lt, None, 1.0, &mut bufs).unwrap();
    bufs.clear().unwrap();
    ops::softmax_xent(&zt, &good, None, 1.0, &mut bufs).unwrap();
    let s = bufs.check().unwrap();
    let zr = r::f32_to_f16_round(&z);
    let (loss, _) = r::softmax_xent_fwd(batch, classes, &zr, &[0, 1, 2, 3]);
    assert!(((s.loss as f64 - loss) / loss).abs() < 1e-6, "{} vs {loss}", s.loss);
    assert_eq!((s.rows, s.top5), (batch, r::topk_hits(batch, classes, &zr, &[0, 1, 2, 3], 5)));
}

#[test]
fn shape_errors_name_the_problem() {
    let dev = Device::emu();
    let z = Tensor::<f16>::zeros(&dev, &[4, 10]).unwrap();
    let mut bufs = ops::XentBuffers::new(&dev, 4).unwrap();
    let labels3 = Tensor::<i32>::zeros(&dev, &[3]).unwrap();
    let e = ops::softmax_xent(&z, &labels3, None, 1.0, &mut bufs).unwrap_err();
    assert!(e.to_string().contains("labels must have shape [4], got [3]"), "{e}");

    let labels = Tensor::<i32>::zeros(&dev, &[4]).unwrap();
    let mut dz = Tensor::<f16>::zeros(&dev, &[4, 9]).unwrap();
    let e = ops::softmax_xent(&z, &labels, Some(&mut dz), 1.0, &mut bufs).unwrap_err();
    assert!(e.to_string().contains("dlogits (logits' shape) must have shape [4, 10], got [4, 9]"), "{e}");
    let mut dz_t = Tensor::<f16>::zeros(&dev, &[10, 4]).unwrap();
    let e = ops::softmax_xent(&z, &labels, Some(&mut dz_t), 1.0, &mut bufs).unwrap_err();
    assert!(e.to_string().contains("got [10, 4]"), "{e}");
    let e = ops::softmax_xent(&z, &labels, None, 0.0, &mut bufs).unwrap_err();
    assert!(e.to_string().contains("loss_scale"), "{e}");

    let z3 = Tensor::<f16>::zeros(&dev, &[2, 2, 10]).unwrap();
    let e = ops::softmax_xent(&z3, &labels, None, 1.0, &mut bufs).unwrap_err();
    assert!(e.to_string().contains("[batch, classes]"), "{e}");

    let mut small = ops::XentBuffers::new(&dev, 2).unwrap();
    let e = ops::softmax_xent(&z, &labels, None, 1.0, &mut small).unwrap_err();
    assert!(e.to_string().contains("exceeds the buffers' capacity 2"), "{e}");
}

/// The report is sticky across launches: a second launch with bad labels (before a clear)
/// adds to the count but must not replace the first launch's row, label and class count.
#[test]
fn a_later_bad_launch_keeps_the_first_report() {
    let dev = Device::emu();
    let batch = 6;
    let mut bufs = ops::XentBuffers::new(&dev, batch).unwrap();
    let mut launch = |classes: usize, labels: &[i32]| {
        let zt = Tensor::from_f32(&dev, &[batch, classes], &values(batch * classes, 3, 4.0)).unwrap();
        let lt = Tensor::from_host(&dev, &[batch], labels).unwrap();
        ops::softmax_xent(&zt, &lt, None, 1.0, &mut bufs).unwrap();
    };
    let (first, second) = ([0, 1, 9, 3, 4, 5], [-3, 1, 2, 3, 7, 0]);
    launch(7, &first);
    launch(5, &second);
    let msg = bufs.check().unwrap_err().to_string();
    let row = first.iter().position(|&l| !(0..7).contains(&l)).unwrap();
    let bad = first.iter().filter(|&&l| !(0..7).contains(&l)).count()
        + second.iter().filter(|&&l| !(0..5).contains(&l)).count();
    let want = format!("label {} of row {row} is not in 0..7 ({bad} bad rows", first[row]);
    assert!(msg.contains(&want), "want {want:?} in {msg}");
}

/// Batches past the finishing block's 256 threads: one thread sums rows t, t + 256, ..., so the
/// first bad row must be the least of those it sees (and of every warp's), not its last.
#[test]
fn the_first_bad_row_of_a_large_batch_is_named() {
    let dev = Device::emu();
    let (batch, classes) = (600, 3);
    let mut labels: Vec<i32> = (0..batch as i32).map(|i| i % classes as i32).collect();
    for (row, label) in [(4, 3), (260, -1), (516, 50), (300, 7)] {
        labels[row] = label;
    }
    let zt = Tensor::from_f32(&dev, &[batch, classes], &values(batch * classes, 5, 4.0)).unwrap();
    let lt = Tensor::from_host(&dev, &[batch], &labels).unwrap();
    let mut bufs = ops::XentBuffers::new(&dev, batch).unwrap();
    ops::softmax_xent(&zt, &lt, None, 1.0, &mut bufs).unwrap();
    let msg = bufs.check().unwrap_err().to_string();
    let bad = |l: &i32| !(0..classes as i32).contains(l);
    let row = labels.iter().position(bad).unwrap();
    let want = format!(
        "label {} of row {row} is not in 0..{classes} ({} bad rows",
        labels[row],
        labels.iter().filter(|l| bad(l)).count()
    );
    assert!(msg.contains(&want), "want {want:?} in {msg}");
}

/// Equal logits (an untrained or collapsed classifier) rank the classes by index, as argmax
/// would: only the rows labelled 0 are top-1 hits and those labelled 0..4 top-5 hits; with
/// ties counted for the label every row would be, and such a net would score 100%.
#[test]
fn equal_logits_rank_by_class_index() {
    let dev = Device::emu();
    let (batch, classes) = (10, 10);
    let labels: Vec<i32> = (0..batch as i32).collect();
    let zt = Tensor::from_f32(&dev, &[batch, classes], &vec![0.5; batch * classes]).unwrap();
    let lt = Tensor::from_host(&dev, &[batch], &labels).unwrap();
    let mut bufs = ops::XentBuffers::new(&dev, batch).unwrap();
    ops::softmax_xent(&zt, &lt, None, 1.0, &mut bufs).unwrap();
    let s = bufs.check().unwrap();
    assert_eq!((s.top1, s.top5), (1, 5));
    let z = vec![0.5; batch * classes];
    assert_eq!([1, 5].map(|k| r::topk_hits(batch, classes, &z, &labels, k)), [1, 5]);
}

/// An infinite label logit is an fp16 overflow (its loss is NaN), never a hit: row 0's label
/// logit is +inf, row 1's a NaN, row 2 is an ordinary top-1 hit beside another row's overflow.
#[test]
fn a_non_finite_label_logit_is_a_miss() {
    let dev = Device::emu();
    let z = [f32::INFINITY, 1.0, 0.0, f32::NAN, 1.0, 0.0, 3.0, 1.0, 0.0];
    let labels = [0, 0, 0];
    let zt = Tensor::from_f32(&dev, &[3, 3], &z).unwrap();
    let lt = Tensor::from_host(&dev, &[3], &labels).unwrap();
    let mut bufs = ops::XentBuffers::new(&dev, 3).unwrap();
    ops::softmax_xent(&zt, &lt, None, 1.0, &mut bufs).unwrap();
    let s = bufs.check().unwrap();
    assert_eq!((s.top1, s.top5), (1, 1));
    assert_eq!([1, 5].map(|k| r::topk_hits(3, 3, &z, &labels, k)), [1, 1]);
}
