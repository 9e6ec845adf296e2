//! `vgg predict` and `vgg eval`: the paper's testing protocol (Section 3.2) over
//! [`crate::model::Vgg`] and the data pipeline's test transform.
//!
//! Every image becomes a list of *views*, each a data-pipeline [`Plan`] (rescale, window,
//! flip) applied by [`Worker::apply`]:
//! - centre crop: the rescale to Q and the centre `input` x `input` crop, exactly
//!   [`TestTransform`]'s; `--flip` adds its mirror image;
//! - multi-crop: a 5x5 regular grid of crops over the rescale to Q, each also flipped
//!   (50 views a scale, [`crop_grid`]);
//! - multi-scale: the views of every Q in `--scale Q1,Q2,...`.
//!
//! Every model of an ensemble scores every view; softmax posteriors ([`ops::softmax_fwd`],
//! fp32 on the device) are averaged in f64 over views and models, the paper's combination
//! for scales, crops, flips and ensembles alike.
//!
//! Dense evaluation (`--crops dense`, [`dense`]): the FC layers as convolutions over the
//! whole rescale to Q, the score map's class scores averaged over positions before the
//! softmax (as the paper does), the posteriors of the image and its mirror image averaged;
//! `--crops both` averages the dense and the multi-crop posteriors of each image (equal
//! weights), the paper's best single-model combination.
//!
//! Padding: each multi-crop view is its own image, so its conv layers pad its border with
//! zeros, while dense evaluation runs over the whole rescaled image, where the border of the
//! same window sees the neighbouring pixels. The paper (Section 3.2) attributes their
//! complementarity to this difference in boundary conditions; VGG.md records the result:
//! "Multi-crop and dense are complementary: averaging the two gave the best single-model
//! result".
//!
//! Ranking: eval's top-k hits and predict's top classes follow one rule ([`top_k`]'s order): a
//! class outranks the label when its posterior is larger, or NaN, or equal with a lower class
//! index; a NaN label posterior is never a hit. An image whose posterior is not finite (the
//! fp16 forward overflowed) is reported by both commands.
//!
//! Dense evaluation cannot take an image whose rescale's longer side is above
//! 8 x Q (`MAX_DENSE_ASPECT`): `vgg eval` counts such images apart from the
//! unreadable ones ([`EvalReport::too_wide`]), and its error is then over fewer images than
//! the crop views would score.
//!
//! Demo on the CPU emulator (about a minute, then a second):
//! `vgg train --device emu --checkpoint-dir ck` and
//! `vgg eval --weights ck/last.safetensors --data synthetic --device emu`, which scores
//! the training run's own validation images (its seed is stored in the checkpoint).
//!
//! Files: `views.rs` plans and renders an image's views, `ensemble.rs` loads the models and
//! averages their posteriors, `rank.rs` ranks classes, `scales.rs` chooses the test scales;
//! `run.rs` is `vgg eval`, `predict.rs` `vgg predict`, and [`dense`] dense evaluation.
//!
//! [`Plan`]: crate::data::Plan
//! [`Worker::apply`]: crate::data::Worker::apply
//! [`TestTransform`]: crate::data::TestTransform
//! [`ops::softmax_fwd`]: crate::ops::softmax_fwd

pub mod dense;
mod ensemble;
mod predict;
mod rank;
mod run;
mod scales;
mod views;

pub use ensemble::{
    class_list, image_posterior, infer_config, load_ensemble, load_model, posteriors, recorded_test_scale, Model,
};
pub use predict::{predict, PredictArgs, Prediction, TopClass};
pub(crate) use rank::top_k_hit;
pub use rank::{softmax, softmax64, top_k};
pub use run::{eval, ClassRow, EvalArgs, EvalReport};
pub use scales::{parse_scales, test_scales};
pub use views::{crop_grid, dense_views, grid_offsets, views, views_per_scale, Crops, GRID};
