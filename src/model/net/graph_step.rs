//! Training steps replayed from a captured graph ([`Vgg::train_step_graph`]): the queued step's
//! kernels captured once per pair of input buffers, the values that change from step to step
//! (dropout keys, learning rate) read from the model's [`crate::ops::StepVars`].

use super::step::Step;
use super::{Src, Vgg};
use crate::device::Graph;
use crate::{ensure_shape, Result, Tensor};

/// Captured steps kept: a trainer that fills two input buffers in turn replays two graphs.
const GRAPHS: usize = 2;

/// A captured training step and the input buffers it reads.
pub(super) struct StepGraph {
    graph: Graph,
    images: u64,
    labels: u64,
}

impl Vgg {
    /// [`Vgg::train_step_queued`] replayed from a captured graph: the first call captures the
    /// step (on cuda, a CUDA graph), later calls queue the step's values
    /// ([`crate::ops::StepVars`]: dropout keys, learning rate) and launch the graph, one host
    /// call instead of ~110 launches (VGG-16). The same kernels with the same values, so the
    /// results equal `train_step_queued`'s bit for bit. One graph is kept per pair of `images`
    /// and `labels` buffers (two pairs at most, as a trainer filling two in turn needs),
    /// captured again after anything that moves the model's buffers ([`Vgg::relayout`],
    /// [`Vgg::set_conv_choice`], [`Vgg::params_mut`], [`Vgg::check_lifetimes`]). Not with
    /// [`Vgg::keep_trace`], whose copies to the host a replay cannot make.
    pub fn train_step_graph(&mut self, images: &Tensor<u8>, labels: &Tensor<i32>, lr: f32, step: u64) -> Result<()> {
        self.check_batch(images)?;
        images.check(&self.dev, "images", images.len())?;
        labels.check(&self.dev, "labels", self.batch)?;
        ensure_shape!(
            !self.tracing,
            "Vgg::train_step_graph: keep_trace copies activations to the host every step, which a captured step cannot"
        );
        let sgd = self.sgd(lr)?;
        self.scaler.queue()?;
        self.vars.set([self.dropout_seed(0), self.dropout_seed(1)], step, lr)?;
        let (im, lb) = (images.device_ptr(), labels.device_ptr());
        match self.graphs.iter().position(|g| (g.images, g.labels) == (im, lb)) {
            Some(i) => {
                let g = self.graphs.remove(i);
                self.graphs.push(g);
            }
            None => {
                if self.graphs.len() == GRAPHS {
                    self.graphs.remove(0);
                }
                let dev = self.dev.clone();
                let graph = dev.capture(|| {
                    self.compute_grads_src(images, labels, Src::Vars)?;
                    self.optimizer_step(sgd, Step::QueuedAt).map(|_| ())
                })?;
                self.graphs.push(StepGraph { graph, images: im, labels: lb });
            }
        }
        let graph = &self.graphs.last().expect("found or captured above").graph;
        // SAFETY: the graph names the model's parameters, arena views and small buffers, which
        // live as long as the model and are never re-placed while it holds graphs (relayout,
        // set_conv_choice, params_mut and check_lifetimes clear them first); and the images and
        // labels at the addresses it was captured with, which are the tensors borrowed now, of
        // the shapes checked above.
        unsafe { graph.launch() }
    }

    /// Kernel launches in the last captured step replayed (0 before the first
    /// [`Vgg::train_step_graph`]).
    pub fn graph_launches(&self) -> usize {
        self.graphs.last().map_or(0, |g| g.graph.launches())
    }
}
