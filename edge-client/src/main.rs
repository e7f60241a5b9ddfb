//! `edge-client`: the private-inference client on a host.
//!
//! * `edge-client demo` runs everything in one process: an embedded server on loopback with a
//!   bundled model, one ticket, one private inference of a bundled Fashion-MNIST image.
//! * `edge-client infer --server ADDR --model ID --idx FILE --index K` runs one private
//!   inference against a running `cloud-server serve`, with a ticket from the wallet.

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
use edge_client::tickets::{Ticket, TicketWallet};
use edge_client::transport::Connection;

const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
const IO_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// One private inference against a running server, with a ticket from the wallet.
    Infer {
        /// Server address, e.g. 127.0.0.1:7878.
        #[arg(long)]
        server: String,
        /// Model id.
        #[arg(long)]
        model: String,
        /// IDX file of 28x28 images.
        #[arg(long)]
        idx: PathBuf,
        /// Image index.
        #[arg(long)]
        index: usize,
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
        Command::Infer { server, model, idx, index, wallet, json } => {
            infer_cmd(&server, &model, &idx, index, &wallet, json)
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
    dealer: bool,
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
                "method": if o.dealer { "insecure-trusted-dealer" } else { "he" },
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
    let method = if o.dealer { "INSECURE trusted dealer" } else { "HE" };
    println!(
        "preprocess   {:>8.2} ms  sent {:>9} B  received {:>9} B  ({method})",
        o.preprocess.as_secs_f64() * 1e3,
        o.preprocess_bytes.0,
        o.preprocess_bytes.1
    );
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

    // Preprocessing. The HE stage is not implemented yet: the embedded server acts as a trusted
    // dealer, which is NOT private (it knows the client's masks). Say so loudly.
    if !json {
        eprintln!("WARNING: preprocessing uses an insecure trusted dealer (HE preprocessing is not implemented yet);");
        eprintln!("         the online phase below is the real protocol, but this run is not private.");
    }
    let start = Instant::now();
    let (ticket_bytes, material) = cloud_server::dealer::deal(&merged, &mut rand::rng());
    let header = core_nostd::ticket::TicketHeader::from_bytes(&ticket_bytes).map_err(|e| e.to_string())?;
    state.tickets.insert(header.ticket_id, merged.arch.hash(), material)?;
    let ticket = Ticket { header, bytes: ticket_bytes };
    let preprocess = start.elapsed();

    let start = Instant::now();
    let mut conn = Connection::connect(daemon.addr, IO_TIMEOUT)?;
    let arch = conn.hello(model_id, Some(merged.arch.hash()))?;
    let logits = infer(&mut conn, &arch, &ticket, &input)?;
    let online = start.elapsed();
    let t = conn.traffic();
    let reference = FixedPointReference::trace_encoded(&merged, input)?.maps.pop();
    let outcome = Outcome {
        logits,
        frac_bits: arch.frac_bits,
        preprocess,
        preprocess_bytes: (0, 0),
        online,
        online_bytes: (t.sent, t.received),
        reference,
        truth,
        dealer: true,
    };
    report(model_id, &outcome, json);
    Ok(())
}

fn infer_cmd(
    server: &str,
    model_id: &str,
    idx_path: &Path,
    index: usize,
    wallet: &Path,
    json: bool,
) -> Res<()> {
    let (pixels, truth) = load_image(idx_path, index)?;
    let start = Instant::now();
    let mut conn = Connection::connect(server, IO_TIMEOUT)?;
    let arch = conn.hello(model_id, None)?;
    let wallet = TicketWallet::open(wallet, model_id)?;
    let ticket = wallet.take(&arch)?.ok_or_else(|| {
        format!(
            "no ticket for {model_id} in {}: tickets come from HE preprocessing, not implemented yet",
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
        dealer: false,
    };
    report(model_id, &outcome, json);
    Ok(())
}
