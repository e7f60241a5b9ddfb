//! HE preprocessing per bundled model: client and server time (server on 1 and 2 threads),
//! bytes each way on the wire (frames included), ciphertext counts, and for comparison the
//! rotations a Gazelle-style (rotation-based SIMD) packing would need for the same maps.
//!
//! A bench binary (`harness = false`): `cargo bench -p edge-client --bench preprocessing`
//! (`-- --runs N`, default 5; the median is reported). Client and server run in one process, so
//! their times are separate and there is no network; the byte counts are exactly what the TCP
//! flow sends.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_server::he::{HeModel, PrepStep, ServerPreprocessing};
use core_nostd::arch::LinearKind;
use core_nostd::wire::{blob_chunks, encode_frame, HeRound, Message, MAX_FRAME_SIZE};
use edge_client::preprocess::ClientPreprocessing;
use fhe::bfv::{Encoding, EvaluationKeyBuilder, Plaintext, SecretKey};
use fhe_traits::{FheEncoder, FheEncrypter};
use rand::SeedableRng;

const MODELS: [&str; 3] = ["mlp-sq", "cryptonets-sq", "minionn-sq"];

/// Bytes of the frames that carry `blobs` as one round.
fn wire_bytes(round: HeRound, blobs: &[Vec<u8>]) -> usize {
    let mut buf = [0u8; MAX_FRAME_SIZE];
    let mut total = 0;
    for (i, b) in blobs.iter().enumerate() {
        for c in blob_chunks(round, i as u32, b) {
            total += encode_frame(&Message::HeChunk(c), &mut buf).map_or(0, |f| f.len());
        }
    }
    total
        + encode_frame(&Message::HeRoundEnd { round, blobs: blobs.len() as u32 }, &mut buf)
            .map_or(0, |f| f.len())
}

struct Run {
    client: Duration,
    server: Duration,
    up: usize,
    down: usize,
    up_cts: usize,
    down_cts: usize,
}

fn feed(server: &mut ServerPreprocessing, round: HeRound, blobs: &[Vec<u8>]) -> PrepStep {
    for (i, b) in blobs.iter().enumerate() {
        for c in blob_chunks(round, i as u32, b) {
            server.on_chunk(&c).expect("chunk");
        }
    }
    server.on_round_end(round, blobs.len() as u32).expect("round")
}

fn run(he: &Arc<HeModel>, rng: &mut rand::rngs::StdRng) -> Run {
    let arch = he.arch().clone();
    let mut server = ServerPreprocessing::new(he.clone());
    let t = Instant::now();
    let (mut client, round1) = ClientPreprocessing::new(&arch, [0; 16], rng).expect("client");
    let mut client_time = t.elapsed();
    let t = Instant::now();
    let PrepStep::Reply { blobs: round2, .. } = feed(&mut server, HeRound::MaskCiphertexts, &round1) else {
        panic!("expected linear results")
    };
    let mut server_time = t.elapsed();
    let t = Instant::now();
    let round3 = client.on_linear_results(&round2, rng).expect("client");
    client_time += t.elapsed();
    let t = Instant::now();
    let PrepStep::Finished { blobs: round4, .. } = feed(&mut server, HeRound::ActivationCiphertexts, &round3)
    else {
        panic!("expected product results")
    };
    server_time += t.elapsed();
    let t = Instant::now();
    let _ticket = client.on_product_results(&round4).expect("ticket");
    client_time += t.elapsed();
    Run {
        client: client_time,
        server: server_time,
        up: wire_bytes(HeRound::MaskCiphertexts, &round1)
            + wire_bytes(HeRound::ActivationCiphertexts, &round3),
        down: wire_bytes(HeRound::LinearResults, &round2) + wire_bytes(HeRound::ProductResults, &round4),
        up_cts: round1.len() + round3.len(),
        down_cts: round2.len() + round4.len(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Rotations of a Gazelle-style packing (SIMD slots, n = 8192), counted with the formulas of
/// Juvekar et al. 2018 (§5): hybrid matrix-vector product `n_i n_o / n - 1 + log2(n / n_o)`;
/// convolution with `c_n = n / (h w)` channels per ciphertext: `(f_h f_w - 1)` rotations per input
/// ciphertext plus `c_n - 1` per (input, output) ciphertext pair to sum the channel blocks.
fn gazelle_rotations(kind: &LinearKind, n: usize) -> usize {
    match *kind {
        LinearKind::Dense { inputs, outputs } => {
            let (ni, no) = (inputs as usize, outputs as usize);
            let diag = (ni * no).div_ceil(n).saturating_sub(1);
            let sum = if no < n { (n / no.next_power_of_two()).ilog2() as usize } else { 0 };
            diag + sum
        }
        LinearKind::Conv2d { input, out_channels, kernel_h, kernel_w, .. } => {
            let hw = (input.height * input.width) as usize;
            let cn = (n / hw).max(1);
            let (ci, co) = (input.channels as usize, out_channels as usize);
            let (in_cts, out_cts) = (ci.div_ceil(cn), co.div_ceil(cn));
            in_cts * ((kernel_h * kernel_w) as usize - 1) + in_cts * out_cts * (cn.min(ci) - 1)
        }
    }
}

/// One column rotation with fhe (key switching), for the Gazelle comparison's time column.
fn rotation_time() -> Duration {
    let par = he_bfv::parameters().expect("parameters");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let sk = SecretKey::random(&par, &mut rng);
    let ek = EvaluationKeyBuilder::new(&sk)
        .and_then(|mut b| b.enable_column_rotation(1).and_then(|b| b.build(&mut rng)))
        .expect("Galois key");
    let pt = Plaintext::try_encode(&[1u64, 2, 3][..], Encoding::simd(), &par).expect("encode");
    let ct = sk.try_encrypt(&pt, &mut rng).expect("encrypt");
    let _ = ek.rotates_columns_by(&ct, 1);
    let t = Instant::now();
    for _ in 0..10 {
        let _ = ek.rotates_columns_by(&ct, 1);
    }
    t.elapsed() / 10
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let models_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-server/models");
    let rotation = rotation_time();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "HE preprocessing per ticket, median of {runs} runs, {cores} cores; BFV n = 8192, log q = 186\n"
    );
    println!(
        "| model | client ms | server ms (1 thread) | server ms (2 threads) | total ms (2 threads) | up KB | down KB | ciphertexts up / down | ct x pt products | Gazelle rotations (est. ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for id in MODELS {
        let merged = cloud_server::model::load_calibrated(&models_dir.join(format!("{id}.onnx")), id)
            .expect("bundled model")
            .merged;
        let mut cells = Vec::new();
        let mut last = None;
        for threads in [1, 2] {
            let he = Arc::new(HeModel::new(&merged).expect("HE model").with_threads(threads));
            let results: Vec<Run> = (0..runs).map(|_| run(&he, &mut rng)).collect();
            let server = median(results.iter().map(|r| r.server).collect());
            let client = median(results.iter().map(|r| r.client).collect());
            cells.push((client, server));
            last = results.into_iter().next().map(|r| (r, he.products()));
        }
        let Some((r, products)) = last else { continue };
        let rotations: usize = merged.arch.maps.iter().map(|m| gazelle_rotations(&m.kind, 8192)).sum();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {id} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} / {} | {products} | {rotations} ({:.0}) |",
            ms(cells[1].0),
            ms(cells[0].1),
            ms(cells[1].1),
            ms(cells[1].0 + cells[1].1),
            r.up / 1024,
            r.down / 1024,
            r.up_cts,
            r.down_cts,
            ms(rotation) * rotations as f64,
        );
    }
    println!(
        "\nThis packing needs no rotations and no Galois keys; one fhe rotation measured {:.2} ms here.",
        rotation.as_secs_f64() * 1e3
    );
}
