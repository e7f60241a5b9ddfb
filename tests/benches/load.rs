//! Load test: `--clients N` (default 64) concurrent clients against a real `cloud-server serve`
//! process on loopback, each doing HE preprocessing and then private inferences
//! (`--inferences K` each, default 2), every result checked against the fixed-point reference.
//! Reports throughput, p50/p99 latency per phase and the server's peak RSS (VmHWM).
//!
//! Bounded in count and time, loopback only:
//! `cargo build --release -p cloud-server && cargo bench -p integration-tests --bench load`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloud_server::model::{idx, load_calibrated, FixedPointReference};
use edge_client::online::infer;
use edge_client::preprocess::preprocess;
use edge_client::tickets::Ticket;
use edge_client::transport::Connection;
use rand::SeedableRng;

const MODEL: &str = "minionn-sq";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients = arg(&args, "--clients", 64).clamp(1, 256);
    let inferences = arg(&args, "--inferences", 2).clamp(1, 20);
    let binary = root().join("target/release/cloud-server");
    if !binary.exists() {
        eprintln!("build the server first: cargo build --release -p cloud-server");
        std::process::exit(2);
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let dir = std::env::temp_dir().join(format!("pi-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("server.toml");
    let model_path = root().join(format!("cloud-server/models/{MODEL}.onnx"));
    let mut f = std::fs::File::create(&config).expect("config");
    write!(
        f,
        "listen = \"127.0.0.1:{port}\"\n[[model]]\nid = \"{MODEL}\"\npath = \"{}\"\n[limits]\nmax_sessions = {}\n",
        model_path.display(),
        clients + 8
    )
    .expect("config");
    let child = Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cloud-server");
    let daemon = Daemon(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            eprintln!("the daemon did not start listening on {addr} within 60 s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let baseline = peak_rss_kb(daemon.0.id()).unwrap_or(0);

    let merged = load_calibrated(&model_path, MODEL).expect("model").merged;
    let images = idx::read_images(&root().join("edge-client/data/fashion-mnist-t10k-200-images-idx3-ubyte"))
        .expect("sample images");
    let start = Instant::now();
    let results: Vec<(Vec<Duration>, Vec<Duration>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (addr, merged, images) = (&addr, &merged, &images);
                scope.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                    let mut conn =
                        Connection::connect(addr.as_str(), Duration::from_secs(300)).expect("connect");
                    let arch = conn.hello(MODEL, Some(merged.arch.hash())).expect("hello");
                    let (mut pre, mut online) = (vec![], vec![]);
                    for k in 0..inferences {
                        let t = Instant::now();
                        let (bytes, _) = preprocess(&mut conn, &arch, &mut rng).expect("preprocessing");
                        pre.push(t.elapsed());
                        let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).expect("ticket");
                        let index = (c * inferences + k) % images.len();
                        let x =
                            FixedPointReference::encode_pixels(merged, images.pixels(index).expect("image"));
                        let t = Instant::now();
                        let logits =
                            infer(&mut conn, &arch, &Ticket { header, bytes }, &x).expect("inference");
                        online.push(t.elapsed());
                        let want = FixedPointReference::trace_encoded(merged, x.clone()).expect("reference");
                        let bound = FixedPointReference::error_bound(merged, &x).expect("bound");
                        for ((g, w), b) in logits.iter().zip(want.maps.last().expect("logits")).zip(&bound) {
                            assert!((g.to_i64_centered() - w.to_i64_centered()).abs() <= *b, "wrong logit");
                        }
                    }
                    (pre, online)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let wall = start.elapsed();
    let peak = peak_rss_kb(daemon.0.id()).unwrap_or(0);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);

    let mut pre: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let mut online: Vec<Duration> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
    pre.sort();
    online.sort();
    let total = clients * inferences;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("load test: {clients} concurrent clients x {inferences} (preprocessing + inference) of {MODEL}, {cores} cores, loopback");
    println!("all {total} results equal the fixed-point reference (within its truncation bound)");
    println!(
        "wall {:.1} s, throughput {:.2} private inferences/s (preprocessing included)",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64()
    );
    println!(
        "preprocessing latency p50 {:.0} ms, p99 {:.0} ms; online latency p50 {:.1} ms, p99 {:.1} ms",
        percentile(&pre, 0.5).as_secs_f64() * 1e3,
        percentile(&pre, 0.99).as_secs_f64() * 1e3,
        percentile(&online, 0.5).as_secs_f64() * 1e3,
        percentile(&online, 0.99).as_secs_f64() * 1e3
    );
    println!("server peak RSS {} MB (after start-up: {} MB)", peak / 1024, baseline / 1024);
}
