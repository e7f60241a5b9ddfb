//! Helpers shared by the cross-crate integration tests in `tests/tests/`: an in-process daemon on
//! loopback, and a trusted dealer that makes matching client/server tickets in the clear (used
//! to test the online phase and the daemon independently of HE preprocessing).

use std::net::SocketAddr;
use std::sync::Arc;

use cloud_server::config::Limits;
use cloud_server::model::merged::weight_count;
use cloud_server::model::{AffineWeights, MergedModel};
use cloud_server::session::{ServedModel, ServerState};
use core_nostd::arch::{AffineSpec, Architecture, LinearKind, Shape};
use rand::Rng;

/// A small random model: conv (stride 2, padding) -> square -> dense -> square -> dense.
pub fn random_model(id: &str, rng: &mut impl Rng) -> MergedModel {
    let input = Shape::new(1, 12, 10);
    let conv = LinearKind::Conv2d {
        input,
        out_channels: 4,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 2,
        stride_w: 2,
        pad_h: 1,
        pad_w: 1,
    };
    let n1 = conv.output_len() as u32;
    let kinds =
        [conv, LinearKind::Dense { inputs: n1, outputs: 16 }, LinearKind::Dense { inputs: 16, outputs: 10 }];
    let mut maps = heapless::Vec::new();
    let mut weights = Vec::new();
    for kind in kinds {
        let _ = maps.push(AffineSpec { kind, truncate_bits: 6 });
        weights.push(AffineWeights {
            weights: (0..weight_count(&kind)).map(|_| rng.random_range(-40..=40)).collect(),
            bias: (0..kind.output_len()).map(|_| rng.random_range(-5000..=5000)).collect(),
        });
    }
    let arch = Architecture {
        model_id: heapless::String::try_from(id).expect("short id"),
        input,
        maps,
        frac_bits: 8,
    };
    MergedModel { arch, maps: weights }
}

/// A model as the daemon serves it, with direct (unoptimised) linear layers.
pub fn served(m: &MergedModel) -> ServedModel {
    ServedModel::from_merged(m)
}

pub use cloud_server::dealer::deal;

/// A daemon on loopback serving `models` with `limits`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    _daemon: cloud_server::daemon::LocalDaemon,
}

impl TestServer {
    pub fn start(models: Vec<ServedModel>, limits: Limits) -> TestServer {
        let state = Arc::new(ServerState::new(models, limits));
        let daemon =
            cloud_server::daemon::LocalDaemon::start(state.clone()).expect("start the loopback daemon");
        TestServer { addr: daemon.addr, state, _daemon: daemon }
    }
}
