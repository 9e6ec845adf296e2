//! Problem shapes shared by the kernels, the reference and the benches.
//!
//! One list ([`conv_problems`]) feeds tests and benches alike: edge cases first (the
//! shapes that break tiling), then VGG-16's 3x3 layers. Activations are NHWC; 3x3 filters
//! are stored KRSC (`[K][3][3][C]`, i.e. output channel, filter row, filter column, input
//! channel), the layout the NHWC kernels read contiguously along C.

/// A 3x3, stride 1, pad 1 convolution: input `N x H x W x C` (NHWC), filters `K x 3 x 3 x C`
/// (KRSC), output `N x H x W x K`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvProblem {
    /// Batch size.
    pub n: usize,
    /// Image height (input and output alike).
    pub h: usize,
    /// Image width (input and output alike).
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels (filters).
    pub k: usize,
}

impl ConvProblem {
    /// The problem of batch `n`, `h x w` images, `c` input and `k` output channels.
    pub const fn new(n: usize, h: usize, w: usize, c: usize, k: usize) -> Self {
        Self { n, h, w, c, k }
    }
    /// Elements of the input activation `N*H*W*C`.
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    /// Elements of the output activation `N*H*W*K`.
    pub fn output_len(&self) -> usize {
        self.n * self.h * self.w * self.k
    }
    /// Elements of the filter tensor `K*3*3*C`.
    pub fn filter_len(&self) -> usize {
        self.k * 9 * self.c
    }
    /// Multiply-adds of the direct convolution times two: the FLOP count every
    /// algorithm is credited with, so that Winograd's savings show as "effective" FLOP/s.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.h * self.w) as f64 * (self.c * self.k * 9) as f64
    }
}

impl std::fmt::Display for ConvProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "N{} H{} W{} C{} K{}", self.n, self.h, self.w, self.c, self.k)
    }
}

/// A named entry of the shared problem list.
#[derive(Clone, Copy, Debug)]
pub struct NamedProblem {
    /// A short identifier for test and bench output, such as `conv3_1` or `n1_15x15`.
    pub name: &'static str,
    /// The shape.
    pub problem: ConvProblem,
}

const fn p(name: &'static str, n: usize, h: usize, w: usize, c: usize, k: usize) -> NamedProblem {
    NamedProblem { name, problem: ConvProblem::new(n, h, w, c, k) }
}

/// Edge cases: N = 1, 1x1 / 2x2 / 3x3 / 7x7 / 15x15 images (narrow and wide), H != W, C or
/// K = 8, and the first layer's C = 3.
pub const EDGE_CASES: &[NamedProblem] = &[
    p("n1_1x1", 1, 1, 1, 8, 8),
    p("n2_2x2", 2, 2, 2, 8, 16),
    p("n1_3x3", 1, 3, 3, 16, 8),
    p("n2_7x7", 2, 7, 7, 8, 8),
    p("n1_15x15", 1, 15, 15, 16, 24),
    p("n1_5x9", 1, 5, 9, 8, 16),
    p("n3_6x4", 3, 6, 4, 24, 8),
    p("c3_first", 2, 9, 11, 3, 16),
    // More input-channel steps of 16 than the Winograd pipeline has buffers (the last one half
    // full), 70 tiles (a ragged second block of 64), K = 40 (a ragged block of 32 channels).
    p("deep_c88", 2, 9, 13, 88, 40),
    // C = 128: the wgrad's 128 x 256 tiles (K > 64), the last of its 5 column blocks half
    // past 9C = 1152; K = 72 a ragged second row of blocks.
    p("wide_c128", 1, 3, 5, 128, 72),
    // The tiles for wide layers (wgmma's 128-channel halo tile and flat 256, the 128 x 256
    // wgrads) on the smallest images: one pixel, a 2x2 batch, a 7x7 with K = 264 (a third,
    // nearly empty block of output channels), a 15x15 with K = 136.
    p("wide_1x1_c256", 1, 1, 1, 256, 256),
    p("wide_2x2_c136", 2, 2, 2, 136, 136),
    p("wide_7x7_k264", 1, 7, 7, 72, 264),
    p("wide_15x15_k136", 1, 15, 15, 24, 136),
    // The first layer's C = 3 on 3x3 and 15x15 images.
    p("c3_3x3", 2, 3, 3, 3, 8),
    p("c3_15x15", 1, 15, 15, 3, 16),
];

/// VGG-16's thirteen 3x3 layers at 224x224, batch given by the caller.
pub fn vgg16_layers(batch: usize) -> Vec<NamedProblem> {
    const L: &[(&str, usize, usize, usize)] = &[
        ("conv1_1", 224, 3, 64),
        ("conv1_2", 224, 64, 64),
        ("conv2_1", 112, 64, 128),
        ("conv2_2", 112, 128, 128),
        ("conv3_1", 56, 128, 256),
        ("conv3_2", 56, 256, 256),
        ("conv3_3", 56, 256, 256),
        ("conv4_1", 28, 256, 512),
        ("conv4_2", 28, 512, 512),
        ("conv4_3", 28, 512, 512),
        ("conv5_1", 14, 512, 512),
        ("conv5_2", 14, 512, 512),
        ("conv5_3", 14, 512, 512),
    ];
    L.iter().map(|&(name, hw, c, k)| p(name, batch, hw, hw, c, k)).collect()
}

/// VGG-16's layers shrunk for the emulator: spatial size divided by `shrink` (at least 1)
/// and channels capped at `max_c`, keeping each layer's C/K ratio where possible.
pub fn vgg16_layers_reduced(batch: usize, shrink: usize, max_c: usize) -> Vec<NamedProblem> {
    vgg16_layers(batch)
        .into_iter()
        .map(|np| {
            let q = np.problem;
            let hw = (q.h / shrink).max(1);
            let cap = |x: usize| if x == 3 { 3 } else { x.min(max_c) };
            NamedProblem { name: np.name, problem: ConvProblem::new(batch, hw, hw, cap(q.c), cap(q.k)) }
        })
        .collect()
}

/// The whole list: edge cases first, then VGG-16 reduced for the emulator.
pub fn conv_problems() -> Vec<NamedProblem> {
    let mut v = EDGE_CASES.to_vec();
    v.extend(vgg16_layers_reduced(1, 16, 32));
    v
}
