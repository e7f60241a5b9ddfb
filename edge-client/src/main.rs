//! `edge-client`: the private-inference client on a host.
//!
//! * `edge-client demo` runs everything in one process: an embedded server on loopback with a
//!   bundled model, HE preprocessing of one ticket, one private inference of a bundled
//!   Fashion-MNIST image.
//! * `edge-client preprocess --server ADDR --model ID --tickets N` stores N tickets in the wallet.
//! * `edge-client infer --server ADDR --model ID --idx FILE --index K` runs one private
//!   inference against a running `cloud-server serve`, with a ticket from the wallet.
//! * `edge-client eval --server ADDR --model ID --data DIR` runs private inference over a test
//!   set (one fresh ticket per image) and prints the accuracy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use cloud_server::model::{idx, FixedPointReference};
use cloud_server::session::{ServedModel, ServerState};
use core_nostd::arch::Architecture;
use core_nostd::fixed_point::encode_pixel;
use core_nostd::Fp;
use edge_client::online::infer;
use edge_client::preprocess::preprocess;
use edge_client::tickets::{Ticket, TicketWallet};
use edge_client::transport::Connection;

const CLASSES: [&str; 10] = core_nostd::labels::FASHION_MNIST;
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// `eval` reconnects after this many images (a server caps a connection's lifetime).
const IMAGES_PER_CONNECTION: usize = 100;

#[derive(Parser)]
#[command(name = "edge-client", version, about = "Private CNN inference client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Private inference end to end in one process (embedded server on loopback).
    Demo {
        /// Bundled model: mlp-sq, cryptonets-sq or minionn-sq.
        #[arg(long, default_value = "minionn-sq")]
        model: String,
        /// IDX file of 28x28 images (default: the bundled 200-image sample).
        #[arg(long)]
        idx: Option<PathBuf>,
        /// Image index in the IDX file.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Print one JSON object (label, logits, per-phase time and bytes).
        #[arg(long)]
        json: bool,
    },
    /// Make tickets with HE preprocessing against a running server and store them in the wallet.
    Preprocess {
        /// Server address, e.g. 127.0.0.1:7878.
        #[arg(long)]
        server: String,
        /// Model id.
        #[arg(long)]
        model: String,
        /// Number of tickets.
        #[arg(long, default_value_t = 1)]
        tickets: usize,
        /// Ticket wallet directory.
        #[arg(long, default_value = "tickets")]
        wallet: PathBuf,
    },
    /// Hand tickets to a board over its serial link (the board never does HE). Takes them from
    /// the wallet, making fresh ones with the server when the wallet runs short; a ticket leaves
    /// the wallet only once the board acknowledged it.
    Provision {
        /// Server address (for the architecture, and to make tickets when the wallet is short).
        #[arg(long)]
        server: String,
        /// Model id (the board's MODEL_ID).
        #[arg(long)]
        model: String,
        /// The board's provisioning link: a serial device (/dev/ttyACM0) or tcp:HOST:PORT.
        #[arg(long)]
        link: String,
        /// Number of tickets to hand over.
        #[arg(long, default_value_t = 1)]
        tickets: usize,
        /// Ticket wallet directory.
        #[arg(long, default_value = "tickets")]
        wallet: PathBuf,
    },
    /// Private inference over a test set: accuracy (and agreement with the plaintext fixed-point
    /// reference if you own the model file).
    Eval {
        /// Server address.
        #[arg(long)]
        server: String,
        /// Model id.
        #[arg(long)]
        model: String,
        /// Directory with the Fashion-MNIST t10k IDX files (plain or .gz).
        #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
        data: PathBuf,
        /// Evaluate only the first N images.
        #[arg(long)]
        limit: Option<usize>,
        /// The model's ONNX file (with its .quant.json), to report agreement with the
        /// fixed-point reference; only the model's owner has it.
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// One private inference against a running server, with a ticket from the wallet.
    Infer {
        /// Server address, e.g. 127.0.0.1:7878.
        #[arg(long)]
        server: String,
        /// Model id.
        #[arg(long)]
        model: String,
        /// IDX file of 28x28 images (with --index).
        #[arg(long, required_unless_present = "raw", conflicts_with = "raw")]
        idx: Option<PathBuf>,
        /// Image index in the IDX file.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// A raw image instead: one byte per pixel, row-major, exactly the model's input size.
        #[arg(long)]
        raw: Option<PathBuf>,
        /// Ticket wallet directory.
        #[arg(long, default_value = "tickets")]
        wallet: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { model, idx, index, json } => demo(&model, idx.as_deref(), index, json),
        Command::Infer { server, model, idx, index, raw, wallet, json } => {
            let image = match (raw, idx) {
                (Some(raw), _) => Image::Raw(raw),
                (None, Some(idx)) => Image::Idx(idx, index),
                (None, None) => Image::Idx(PathBuf::new(), index),
            };
            infer_cmd(&server, &model, &image, &wallet, json)
        }
        Command::Preprocess { server, model, tickets, wallet } => {
            preprocess_cmd(&server, &model, tickets, &wallet)
        }
        Command::Provision { server, model, link, tickets, wallet } => {
            provision_cmd(&server, &model, &link, tickets, &wallet)
        }
        Command::Eval { server, model, data, limit, reference } => {
            eval_cmd(&server, &model, &data, limit, reference.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bundled(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Pixels of image `index` and its label if a labels file sits next to the images file.
fn load_image(path: &Path, index: usize) -> Res<(Vec<u8>, Option<u8>)> {
    let images = idx::read_images(path)?;
    let pixels =
        images.pixels(index).ok_or_else(|| format!("{} has {} images", path.display(), images.len()))?;
    let labels_path = PathBuf::from(path.to_string_lossy().replace("images-idx3", "labels-idx1"));
    let label = idx::read_labels(&labels_path).ok().and_then(|l| l.get(index).copied());
    Ok((pixels.to_vec(), label))
}

fn encode(arch: &Architecture, pixels: &[u8]) -> Res<Vec<Fp>> {
    if pixels.len() != arch.input_len() {
        return Err(format!(
            "image has {} pixels, {} expects {}",
            pixels.len(),
            arch.model_id,
            arch.input_len()
        )
        .into());
    }
    Ok(pixels.iter().map(|&p| encode_pixel(p, u32::from(arch.frac_bits))).collect())
}

struct Outcome {
    logits: Vec<Fp>,
    frac_bits: u8,
    preprocess: Duration,
    preprocess_bytes: (u64, u64),
    online: Duration,
    online_bytes: (u64, u64),
    reference: Option<Vec<Fp>>,
    truth: Option<u8>,
}

fn report(model: &str, o: &Outcome, json: bool) {
    let scale = (1u64 << o.frac_bits) as f64;
    let reals: Vec<f64> = o.logits.iter().map(|v| v.to_i64_centered() as f64 / scale).collect();
    let label = cloud_server::model::reference::argmax(&reals);
    let max = reals[label];
    let z: f64 = reals.iter().map(|v| (v - max).exp()).sum();
    let confidence = 1.0 / z;
    let ref_label = o.reference.as_ref().map(|r| {
        let v: Vec<i64> = r.iter().map(|x| x.to_i64_centered()).collect();
        cloud_server::model::reference::argmax(&v)
    });
    let max_diff = o.reference.as_ref().map(|r| {
        r.iter()
            .zip(&o.logits)
            .map(|(a, b)| (a.to_i64_centered() - b.to_i64_centered()).abs())
            .max()
            .unwrap_or(0)
    });
    if json {
        let v = serde_json::json!({
            "model": model,
            "label": label,
            "class": CLASSES.get(label),
            "confidence": confidence,
            "logits": reals,
            "logits_fixed": o.logits.iter().map(|v| v.to_i64_centered()).collect::<Vec<_>>(),
            "frac_bits": o.frac_bits,
            "true_label": o.truth,
            "reference_label": ref_label,
            "max_abs_diff_to_reference_ulp": max_diff,
            "preprocessing": {
                "method": "he",
                "ms": o.preprocess.as_secs_f64() * 1e3,
                "bytes_sent": o.preprocess_bytes.0,
                "bytes_received": o.preprocess_bytes.1,
            },
            "online": {
                "ms": o.online.as_secs_f64() * 1e3,
                "bytes_sent": o.online_bytes.0,
                "bytes_received": o.online_bytes.1,
            },
        });
        println!("{v}");
        return;
    }
    println!("model        {model}");
    println!(
        "prediction   {label} ({}), confidence {:.1} %",
        CLASSES.get(label).unwrap_or(&"?"),
        confidence * 100.0
    );
    if let Some(t) = o.truth {
        println!("true label   {t} ({})", CLASSES.get(t as usize).unwrap_or(&"?"));
    }
    if let (Some(r), Some(d)) = (ref_label, max_diff) {
        println!("reference    plaintext fixed-point label {r}; max |logit difference| {d} ulp");
    }
    if o.preprocess_bytes == (0, 0) {
        println!("preprocess   done earlier (ticket from the wallet)");
    } else {
        println!(
            "preprocess   {:>8.2} ms  sent {:>9} B  received {:>9} B  (HE, input-independent)",
            o.preprocess.as_secs_f64() * 1e3,
            o.preprocess_bytes.0,
            o.preprocess_bytes.1
        );
    }
    println!(
        "online       {:>8.2} ms  sent {:>9} B  received {:>9} B  (1 round trip per square layer)",
        o.online.as_secs_f64() * 1e3,
        o.online_bytes.0,
        o.online_bytes.1
    );
}

fn demo(model_id: &str, idx_path: Option<&Path>, index: usize, json: bool) -> Res<()> {
    let onnx = bundled(&format!("../cloud-server/models/{model_id}.onnx"));
    let loaded = cloud_server::model::load_calibrated(&onnx, model_id)?;
    let merged = loaded.merged;
    let default_idx = bundled("data/fashion-mnist-t10k-200-images-idx3-ubyte");
    let (pixels, truth) = load_image(idx_path.unwrap_or(&default_idx), index)?;
    let input = encode(&merged.arch, &pixels)?;

    let state = Arc::new(ServerState::new(vec![ServedModel::from_merged(&merged)], Default::default()));
    let daemon = cloud_server::daemon::LocalDaemon::start(state.clone())?;

    let mut conn = Connection::connect(daemon.addr, IO_TIMEOUT)?;
    let arch = conn.hello(model_id, Some(merged.arch.hash()))?;
    let (ticket_bytes, stats) = preprocess(&mut conn, &arch, &mut rand::rng())?;
    let header = core_nostd::ticket::TicketHeader::from_bytes(&ticket_bytes).map_err(|e| e.to_string())?;
    let ticket = Ticket { header, bytes: ticket_bytes };

    let before = conn.traffic();
    let start = Instant::now();
    let logits = infer(&mut conn, &arch, &ticket, &input)?;
    let online = start.elapsed();
    let t = conn.traffic() - before;
    let reference = FixedPointReference::trace_encoded(&merged, input)?.maps.pop();
    let outcome = Outcome {
        logits,
        frac_bits: arch.frac_bits,
        preprocess: Duration::from_secs_f64(stats.total_seconds),
        preprocess_bytes: (stats.bytes_sent, stats.bytes_received),
        online,
        online_bytes: (t.sent, t.received),
        reference,
        truth,
    };
    report(model_id, &outcome, json);
    Ok(())
}

/// Where `infer` reads its input.
enum Image {
    Idx(PathBuf, usize),
    Raw(PathBuf),
}

fn infer_cmd(server: &str, model_id: &str, image: &Image, wallet: &Path, json: bool) -> Res<()> {
    let (pixels, truth) = match image {
        Image::Idx(path, index) => load_image(path, *index)?,
        Image::Raw(path) => (std::fs::read(path)?, None),
    };
    let start = Instant::now();
    let mut conn = Connection::connect(server, IO_TIMEOUT)?;
    let arch = conn.hello(model_id, None)?;
    let wallet = TicketWallet::open(wallet, model_id)?;
    let ticket = wallet.take(&arch)?.ok_or_else(|| {
        format!(
            "no ticket for {model_id} in {}: make some with `edge-client preprocess --server {server} --model {model_id}`",
            wallet.dir().display()
        )
    })?;
    let input = encode(&arch, &pixels)?;
    let logits = infer(&mut conn, &arch, &ticket, &input)?;
    let t = conn.traffic();
    let outcome = Outcome {
        logits,
        frac_bits: arch.frac_bits,
        preprocess: Duration::ZERO,
        preprocess_bytes: (0, 0),
        online: start.elapsed(),
        online_bytes: (t.sent, t.received),
        reference: None,
        truth,
    };
    report(model_id, &outcome, json);
    Ok(())
}

fn preprocess_cmd(server: &str, model_id: &str, tickets: usize, wallet: &Path) -> Res<()> {
    let mut conn = Connection::connect(server, IO_TIMEOUT)?;
    let arch = conn.hello(model_id, None)?;
    let wallet = TicketWallet::open(wallet, model_id)?;
    let bar = indicatif::ProgressBar::new(tickets as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tickets  {elapsed} ({eta} left)  {msg}",
    )?);
    let (mut sent, mut received) = (0u64, 0u64);
    for _ in 0..tickets {
        let (bytes, stats) = preprocess(&mut conn, &arch, &mut rand::rng())?;
        wallet.store(&arch, &bytes)?;
        sent += stats.bytes_sent;
        received += stats.bytes_received;
        bar.set_message(format!("{:.0} ms/ticket", stats.total_seconds * 1e3));
        bar.inc(1);
    }
    bar.finish();
    eprintln!(
        "stored {tickets} tickets in {} ({} in the wallet); sent {} KB, received {} KB",
        wallet.dir().display(),
        wallet.count()?,
        sent / 1024,
        received / 1024
    );
    Ok(())
}

fn provision_cmd(server: &str, model_id: &str, link: &str, count: usize, wallet: &Path) -> Res<()> {
    // The board first: no ticket leaves the wallet if the board cannot be reached.
    let mut board = Connection::new(edge_client::provision::open_link(link, IO_TIMEOUT)?);
    let mut conn = Connection::connect(server, IO_TIMEOUT)?;
    let arch = conn.hello(model_id, None)?;
    let wallet = TicketWallet::open(wallet, model_id)?;
    // Fresh tickets go to the wallet first, so a failure anywhere below leaves every ticket there.
    let fresh = count.saturating_sub(wallet.count()?);
    if fresh > 0 {
        eprintln!("the wallet holds {} tickets: making {fresh} with the server", wallet.count()?);
        for _ in 0..fresh {
            let (bytes, _) = preprocess(&mut conn, &arch, &mut rand::rng())?;
            wallet.store(&arch, &bytes)?;
        }
    }
    let mut tickets = Vec::with_capacity(count);
    while tickets.len() < count {
        match wallet.take(&arch)? {
            Some(t) => tickets.push(t),
            None => break,
        }
    }
    drop(conn);
    let bar = indicatif::ProgressBar::new(count as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tickets on the board  {elapsed}",
    )?);
    let done = edge_client::provision::provision(&mut board, &arch, tickets, |k| bar.set_position(k as u64));
    bar.finish();
    for t in &done.returned {
        wallet.store(&arch, &t.bytes)?;
    }
    eprintln!(
        "board accepted {} and stored {} of {count} tickets ({} back in {}); {} KB sent",
        done.accepted,
        done.stored,
        done.returned.len(),
        wallet.dir().display(),
        board.traffic().sent / 1024
    );
    match done.error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The first file in `dir` whose name contains `pattern`.
fn find_in(dir: &Path, pattern: &str) -> Res<PathBuf> {
    let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(pattern)))
        .collect();
    hits.sort();
    hits.into_iter().next().ok_or_else(|| format!("no file matching *{pattern}* in {}", dir.display()).into())
}

fn eval_cmd(
    server: &str,
    model_id: &str,
    data: &Path,
    limit: Option<usize>,
    reference: Option<&Path>,
) -> Res<()> {
    let images = idx::read_images(&find_in(data, "t10k-images")?)?;
    let labels = idx::read_labels(&find_in(data, "t10k-labels")?)?;
    let owner_model = reference.map(|p| cloud_server::model::load_calibrated(p, model_id)).transpose()?;
    let count = limit.unwrap_or(images.len()).min(images.len()).min(labels.len());
    let pin = owner_model.as_ref().map(|m| m.merged.arch.hash());
    let mut conn = Connection::connect(server, IO_TIMEOUT)?;
    let arch = conn.hello(model_id, pin)?;
    let bar = indicatif::ProgressBar::new(count as u64);
    let (mut correct, mut agree) = (0usize, 0usize);
    let (mut pre, mut online) = (Duration::ZERO, Duration::ZERO);
    for (k, &truth) in labels.iter().enumerate().take(count) {
        if k > 0 && k % IMAGES_PER_CONNECTION == 0 {
            // Stay well inside the server's session lifetime limit.
            conn = Connection::connect(server, IO_TIMEOUT)?;
            conn.hello(model_id, Some(arch.hash()))?;
        }
        let pixels = images.pixels(k).ok_or("image index")?;
        let input = encode(&arch, pixels)?;
        let t = Instant::now();
        let (bytes, _) = preprocess(&mut conn, &arch, &mut rand::rng())?;
        pre += t.elapsed();
        let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let logits = infer(&mut conn, &arch, &Ticket { header, bytes }, &input)?;
        online += t.elapsed();
        let got: Vec<i64> = logits.iter().map(|v| v.to_i64_centered()).collect();
        let label = cloud_server::model::reference::argmax(&got);
        correct += usize::from(label == usize::from(truth));
        if let Some(m) = &owner_model {
            let want = FixedPointReference::trace_encoded(&m.merged, input)?.maps.pop().unwrap_or_default();
            let want: Vec<i64> = want.iter().map(|v| v.to_i64_centered()).collect();
            agree += usize::from(label == cloud_server::model::reference::argmax(&want));
        }
        bar.set_message(format!("accuracy {:.2} %", 100.0 * correct as f64 / (k + 1) as f64));
        bar.inc(1);
    }
    bar.finish();
    let mut v = serde_json::json!({
        "model": model_id,
        "images": count,
        "accuracy": correct as f64 / count.max(1) as f64,
        "preprocessing_ms_per_image": pre.as_secs_f64() * 1e3 / count.max(1) as f64,
        "online_ms_per_image": online.as_secs_f64() * 1e3 / count.max(1) as f64,
    });
    if owner_model.is_some() {
        v["agreement_with_fixed_point_reference"] = serde_json::json!(agree as f64 / count.max(1) as f64);
    }
    println!("{v}");
    Ok(())
}
