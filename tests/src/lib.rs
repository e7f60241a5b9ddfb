//! Helpers shared by the cross-crate integration tests in `tests/tests/`: an in-process daemon on
//! loopback, small random models, in-process HE preprocessing and ticket parsing, the check
//! against the fixed-point reference, and the emulated board ([`board`]).

pub mod board;

use std::net::SocketAddr;
use std::sync::Arc;

use cloud_server::config::Limits;
use cloud_server::he::{HeModel, PrepStep, ServerPreprocessing};
use cloud_server::inference::ServerMaterial;
use cloud_server::model::merged::weight_count;
use cloud_server::model::{AffineWeights, MergedModel};
use cloud_server::session::{ServedModel, ServerState};
use core_nostd::arch::{AffineSpec, Architecture, LinearKind, Shape};
use core_nostd::wire::{blob_chunks, HeRound};
use core_nostd::Fp;
use edge_client::preprocess::ClientPreprocessing;
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

/// The values of a ticket, split per layer: `(yc_i for every map, e_i for every square layer)`.
pub fn ticket_values(arch: &Architecture, ticket: &[u8]) -> (Vec<Vec<Fp>>, Vec<Vec<Fp>>) {
    use core_nostd::ticket::{SliceBody, TicketBody};
    let mut body = SliceBody::of_ticket(ticket).expect("a whole ticket");
    let l = arch.maps.len();
    let (mut yc, mut e) = (Vec::new(), Vec::new());
    for map in &arch.maps[..l - 1] {
        let len = map.kind.output_len();
        let mut pairs = vec![Fp::ZERO; 2 * len];
        body.read(&mut pairs).expect("ticket body");
        yc.push(pairs.iter().step_by(2).copied().collect());
        e.push(pairs.iter().skip(1).step_by(2).copied().collect());
    }
    let mut last = vec![Fp::ZERO; arch.maps[l - 1].kind.output_len()];
    body.read(&mut last).expect("ticket body");
    yc.push(last);
    (yc, e)
}

/// Runs HE preprocessing for one ticket in process (client and server state machines, blobs
/// through the chunk reassembly as on the wire): the client's ticket and the server's material.
pub fn preprocess_in_process(
    he: &Arc<HeModel>,
    arch: &Architecture,
    rng: &mut impl rand::CryptoRng,
) -> (Vec<u8>, ServerMaterial) {
    let ticket_id = [7u8; 16];
    let mut server = ServerPreprocessing::new(he.clone());
    let (mut client, blobs) = ClientPreprocessing::new(arch, ticket_id, rng).expect("client round 1");
    let replies = match exchange(&mut server, HeRound::MaskCiphertexts, &blobs) {
        PrepStep::Reply { round: HeRound::LinearResults, blobs } => blobs,
        other => panic!("expected linear results, got {other:?}"),
    };
    let blobs =
        client.on_linear_results(&reassemble(HeRound::LinearResults, &replies), rng).expect("client round 3");
    let (replies, material) = match exchange(&mut server, HeRound::ActivationCiphertexts, &blobs) {
        PrepStep::Finished { round: HeRound::ProductResults, blobs, material } => (blobs, material),
        other => panic!("expected product results, got {other:?}"),
    };
    let ticket = client.on_product_results(&reassemble(HeRound::ProductResults, &replies)).expect("ticket");
    (ticket, material)
}

fn exchange(server: &mut ServerPreprocessing, round: HeRound, blobs: &[Vec<u8>]) -> PrepStep {
    feed(server, round, blobs).expect("server round")
}

/// Feeds one round's blobs to the server as `HeChunk`s and ends the round.
pub fn feed(
    server: &mut ServerPreprocessing,
    round: HeRound,
    blobs: &[Vec<u8>],
) -> Result<PrepStep, he_bfv::HeError> {
    for (i, b) in blobs.iter().enumerate() {
        for c in blob_chunks(round, i as u32, b) {
            server.on_chunk(&c)?;
        }
    }
    server.on_round_end(round, blobs.len() as u32)
}

fn reassemble(round: HeRound, blobs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut a = he_bfv::BlobAssembler::new(round, blobs.len());
    for (i, b) in blobs.iter().enumerate() {
        for c in blob_chunks(round, i as u32, b) {
            a.push(&c).expect("reassembly");
        }
    }
    a.finish(blobs.len() as u32).expect("whole round")
}

/// Check private logits (centred fixed-point integers) of `pixels` against the fixed-point
/// reference of `model`: each within the documented truncation error bound, and the same label
/// unless the reference's top two are within that bound. Returns the reference's label.
pub fn check_against_reference(model: &MergedModel, pixels: &[u8], got: &[i64]) -> Result<usize, String> {
    use cloud_server::model::{reference::argmax, FixedPointReference};
    let input = FixedPointReference::encode_pixels(model, pixels);
    let mut trace = FixedPointReference::trace_encoded(model, input.clone()).map_err(|e| e.to_string())?;
    let reference = trace.maps.pop().ok_or("empty reference trace")?;
    let bound = FixedPointReference::error_bound(model, &input).map_err(|e| e.to_string())?;
    let want: Vec<i64> = reference.iter().map(|v| v.to_i64_centered()).collect();
    if got.len() != want.len() {
        return Err(format!("{} logits, the reference has {}", got.len(), want.len()));
    }
    for ((g, w), b) in got.iter().zip(&want).zip(&bound) {
        if (g - w).abs() > *b {
            return Err(format!("private {g}, reference {w}, bound {b}"));
        }
    }
    let (pg, pw) = (argmax(got), argmax(&want));
    let mut sorted = want.clone();
    sorted.sort_unstable();
    let gap = sorted[sorted.len() - 1] - sorted[sorted.len() - 2];
    let max_bound = bound.iter().copied().max().unwrap_or(0);
    if pg != pw && gap > 2 * max_bound {
        return Err(format!("label {pg} vs reference {pw} (gap {gap})"));
    }
    Ok(pw)
}

/// `n` tickets for the model `id` made by HE preprocessing with the daemon at `server` (the
/// architecture pinned to `pin`), as `edge-client preprocess` makes them. Returns the
/// architecture too.
pub fn make_tickets(
    server: SocketAddr,
    id: &str,
    pin: [u8; 32],
    n: usize,
    rng: &mut impl rand::CryptoRng,
) -> (Architecture, Vec<edge_client::tickets::Ticket>) {
    let mut conn = edge_client::transport::Connection::connect(server, std::time::Duration::from_secs(60))
        .expect("connect to the test server");
    let arch = conn.hello(id, Some(pin)).expect("handshake");
    let tickets = (0..n)
        .map(|_| {
            let (bytes, _) =
                edge_client::preprocess::preprocess(&mut conn, &arch, rng).expect("preprocessing");
            let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).expect("ticket header");
            edge_client::tickets::Ticket { header, bytes }
        })
        .collect();
    (arch, tickets)
}
