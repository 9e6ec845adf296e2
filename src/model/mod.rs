//! VGG networks over the ops: configurations ([`config`]), parameters with their
//! torchvision names and layouts ([`params`]), the device network with its training step
//! ([`net`]) and the plan of its device memory ([`memory`]), and a host twin over
//! [`crate::reference`] that tests check it against ([`mod@reference`]).

pub mod config;
pub mod memory;
pub mod net;
pub mod params;
pub mod reference;

pub use config::{Arch, Feature, FeatureKind, VggConfig};
pub use memory::{Breakdown, MemoryPlan, Phase, Role, Sharing, GUARD_BYTES};
pub use net::{ConvChoice, ConvLayerChoice, ConvPlan, OptimConfig, ScalerState, StepStats, Vgg};
pub use params::{Init, Layout, NamedTensor, Param};
