//! The server's session state machine (handshake, HE preprocessing rounds, online phase) fed any
//! byte stream, framed as the daemon frames it: every input ends in replies or a typed error
//! frame, never a panic; the output per input stays bounded.
#![no_main]

use std::sync::{Arc, OnceLock};

use cloud_server::config::Limits;
use cloud_server::model::merged::weight_count;
use cloud_server::model::{AffineWeights, MergedModel};
use cloud_server::session::{Flow, ServedModel, ServerSession, ServerState};
use core_nostd::arch::{AffineSpec, Architecture, LinearKind, Shape};
use core_nostd::wire::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fn state() -> Arc<ServerState> {
    static STATE: OnceLock<Arc<ServerState>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let input = Shape::new(1, 6, 5);
            let kinds = [
                LinearKind::Conv2d {
                    input,
                    out_channels: 2,
                    kernel_h: 3,
                    kernel_w: 3,
                    stride_h: 1,
                    stride_w: 2,
                    pad_h: 1,
                    pad_w: 0,
                },
                LinearKind::Dense { inputs: 24, outputs: 3 },
            ];
            let mut maps = heapless::Vec::new();
            let mut weights = Vec::new();
            for (i, kind) in kinds.into_iter().enumerate() {
                let _ = maps.push(AffineSpec { kind, truncate_bits: 3 });
                weights.push(AffineWeights {
                    weights: (0..weight_count(&kind)).map(|k| (k as i64 * 7 + i as i64) % 19 - 9).collect(),
                    bias: vec![5; kind.output_len()],
                });
            }
            let arch = Architecture {
                model_id: heapless::String::try_from("fuzz").unwrap_or_default(),
                input,
                maps,
                frac_bits: 6,
            };
            let m = MergedModel { arch, maps: weights };
            Arc::new(ServerState::new(vec![ServedModel::from_merged(&m)], Limits::default()))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut session = ServerSession::new(state());
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    let mut input = data;
    while !input.is_empty() {
        match decoder.next_message(&mut input) {
            Ok(Some(msg)) => {
                if session.handle(&msg, &mut out) == Flow::Close {
                    return;
                }
            }
            Ok(None) => return,
            Err(_) => return,
        }
        assert!(out.len() < 64 << 20, "unbounded output");
    }
});
