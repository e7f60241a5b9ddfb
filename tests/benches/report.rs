//! The benchmark report: per bundled model, private online latency and bytes over loopback TCP
//! (real daemon, real client), HE preprocessing time and bytes, and plaintext inference of the
//! same merged network measured in the same run, so the ratios are not across machines or days.
//!
//! Plaintext inference is `FixedPointReference::trace_with` over the server's linear engine:
//! the protocol's arithmetic, written once.
//!
//! `cargo bench -p integration-tests --bench report` prints the tables; add `-- --write` to
//! rewrite `BENCHMARKS.md` at the repository root (`--images N`, default 20, sets the number of
//! inferences per model; medians are reported).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloud_server::config::Limits;
use cloud_server::inference::LinearLayers;
use cloud_server::linear::LazyLayers;
use cloud_server::model::merged::linear_reference;
use cloud_server::model::{idx, load_calibrated, FixedPointReference};
use cloud_server::session::ServedModel;
use core_nostd::Fp;
use edge_client::online::infer;
use edge_client::preprocess::preprocess;
use edge_client::tickets::Ticket;
use edge_client::transport::Connection;
use integration_tests::TestServer;
use rand::SeedableRng;

const MODELS: [&str; 3] = ["mlp-sq", "cryptonets-sq", "minionn-sq"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Row {
    id: &'static str,
    direct: Duration,
    fast: Duration,
    linear_direct: Duration,
    linear_fast: Duration,
    online: Duration,
    online_up: u64,
    online_down: u64,
    round_trips: usize,
    pre: Duration,
    pre_client: Duration,
    pre_up: u64,
    pre_down: u64,
}

fn measure(id: &'static str, images: &idx::Images, count: usize) -> Row {
    let m =
        load_calibrated(&root().join(format!("cloud-server/models/{id}.onnx")), id).expect("model").merged;
    let layers = LazyLayers::new(m.clone()).expect("engine");
    let inputs: Vec<Vec<Fp>> = (0..count)
        .map(|k| FixedPointReference::encode_pixels(&m, images.pixels(k).expect("image")))
        .collect();

    let (mut direct, mut fast, mut linear_direct, mut linear_fast) = (vec![], vec![], vec![], vec![]);
    for x in &inputs {
        let t = Instant::now();
        let reference = FixedPointReference::trace_encoded(&m, x.clone()).expect("reference");
        direct.push(t.elapsed());
        let t = Instant::now();
        let fast_trace =
            FixedPointReference::trace_with(&m, x.clone(), |i, v| layers.apply(i, v)).expect("plain");
        fast.push(t.elapsed());
        assert_eq!(
            fast_trace.maps.last(),
            reference.maps.last(),
            "{id}: the server's engine must equal the reference"
        );
        // The linear layers alone, on the reference's own layer inputs.
        let layer_inputs: Vec<&Vec<Fp>> =
            std::iter::once(&reference.input).chain(&reference.squares).collect();
        let t = Instant::now();
        for (i, xi) in layer_inputs.iter().enumerate() {
            std::hint::black_box(linear_reference(&m.arch.maps[i].kind, &m.maps[i].weights, xi));
        }
        linear_direct.push(t.elapsed());
        let t = Instant::now();
        for (i, xi) in layer_inputs.iter().enumerate() {
            std::hint::black_box(layers.apply(i, xi));
        }
        linear_fast.push(t.elapsed());
    }

    let server = TestServer::start(vec![ServedModel::from_merged(&m)], Limits::default());
    let mut conn = Connection::connect(server.addr, Duration::from_secs(60)).expect("connect");
    let arch = conn.hello(id, Some(m.arch.hash())).expect("hello");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (mut pre, mut pre_client, mut online) = (vec![], vec![], vec![]);
    let (mut pre_bytes, mut online_bytes) = ((0, 0), (0, 0));
    for x in &inputs {
        let t = Instant::now();
        let (bytes, stats) = preprocess(&mut conn, &arch, &mut rng).expect("preprocessing");
        pre.push(t.elapsed());
        pre_client.push(Duration::from_secs_f64(stats.client_seconds));
        pre_bytes = (stats.bytes_sent, stats.bytes_received);
        let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).expect("ticket");
        let before = conn.traffic();
        let t = Instant::now();
        let logits = infer(&mut conn, &arch, &Ticket { header, bytes }, x).expect("inference");
        online.push(t.elapsed());
        let moved = conn.traffic() - before;
        online_bytes = (moved.sent, moved.received);
        std::hint::black_box(logits);
    }
    Row {
        id,
        direct: median(direct),
        fast: median(fast),
        linear_direct: median(linear_direct),
        linear_fast: median(linear_fast),
        online: median(online),
        online_up: online_bytes.0,
        online_down: online_bytes.1,
        round_trips: m.arch.maps.len(),
        pre: median(pre),
        pre_client: median(pre_client),
        pre_up: pre_bytes.0,
        pre_down: pre_bytes.1,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let write = args.iter().any(|a| a == "--write");
    let count = args
        .iter()
        .position(|a| a == "--images")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize)
        .clamp(1, 200);
    let images = idx::read_images(&root().join("edge-client/data/fashion-mnist-t10k-200-images-idx3-ubyte"))
        .expect("bundled sample");
    let rows: Vec<Row> = MODELS.iter().map(|id| measure(id, &images, count)).collect();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(&format!(
        "Written by `cargo bench -p integration-tests --bench report -- --write` on a {cores}-core machine: \
         medians over {count} Fashion-MNIST test images per model, everything measured in the same run. \
         Private inference runs the real daemon and the real client over loopback TCP (no network latency); \
         plaintext inference is the same merged fixed-point network, in process.\n\n"
    ));
    out.push_str("## Online phase vs plaintext inference\n\n");
    out.push_str("| model | private online ms | plaintext ms (server's engine) | ratio | plaintext ms (direct loops) | ratio | online KB up / down | round trips |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.1}x | {:.2} | {:.1}x | {:.1} / {:.1} | {} |\n",
            r.id,
            ms(r.online),
            ms(r.fast),
            r.online.as_secs_f64() / r.fast.as_secs_f64(),
            ms(r.direct),
            r.online.as_secs_f64() / r.direct.as_secs_f64(),
            r.online_up as f64 / 1024.0,
            r.online_down as f64 / 1024.0,
            r.round_trips,
        ));
    }
    out.push_str("\n## Linear layers: the server's engine vs direct loops\n\n");
    out.push_str(
        "| model | all maps, engine ms | all maps, direct loops ms | speed-up |\n|---|---|---|---|\n",
    );
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.1}x |\n",
            r.id,
            ms(r.linear_fast),
            ms(r.linear_direct),
            r.linear_direct.as_secs_f64() / r.linear_fast.as_secs_f64()
        ));
    }
    out.push_str("\n## HE preprocessing per ticket (over loopback TCP)\n\n");
    out.push_str("| model | total ms | of which client ms | KB up | KB down |\n|---|---|---|---|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} |\n",
            r.id,
            ms(r.pre),
            ms(r.pre_client),
            r.pre_up / 1024,
            r.pre_down / 1024
        ));
    }
    out.push_str(
        "\nPer-thread server times, ciphertext counts and the rotation-based comparison: \
         `cargo bench -p edge-client --bench preprocessing`.\n",
    );
    print!("{out}");
    if write {
        let path = root().join("BENCHMARKS.md");
        std::fs::write(&path, &out).expect("write BENCHMARKS.md");
        eprintln!("wrote {}", path.display());
    }
}
