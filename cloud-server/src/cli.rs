//! The `cloud-server` command line: model inspection, evaluation and the fixed-point reference.

use crate::model::{self, cost, idx, reference::argmax, FixedPointReference, LoadedModel};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Default calibration images (Fashion-MNIST training set, Debian `dataset-fashion-mnist`).
pub const DEFAULT_TRAIN_IMAGES: &str = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";
/// Calibration images used to measure the per-map maxima.
pub const CALIBRATION_COUNT: usize = 10_000;

#[derive(Parser)]
#[command(name = "cloud-server", version, about = "Private-inference server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model import, merging and plaintext references.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Run the server daemon (models, address and limits from a TOML file; see `config`).
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct ModelArgs {
    /// The ONNX model.
    model: PathBuf,
    /// IDX images used for calibration (default: the Fashion-MNIST training set when the model
    /// takes 28x28 images; otherwise seeded random inputs).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// When calibrating: the per-inference truncation failure bound, as log2. The bundled models
    /// use the DESIGN's -30; a weaker bound (up to -10) buys fraction bits, i.e. agreement with
    /// f32, at the price of a wrong result once in 2^-x inferences.
    #[arg(long, default_value_t = model::merge::FAILURE_TARGET_LOG2, allow_negative_numbers = true)]
    failure_log2: f64,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Layers before and after merging, operation counts, fixed-point parameters, failure bound.
    Inspect(ModelArgs),
    /// Choose the fixed-point parameters on calibration data and write `<model>.quant.json`
    /// (committed next to the model; the daemon loads models with it).
    Calibrate(ModelArgs),
    /// f32 and fixed-point accuracy and their agreement on a test set.
    Eval {
        #[command(flatten)]
        args: ModelArgs,
        /// Directory with t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz].
        #[arg(long)]
        data: PathBuf,
        /// Evaluate only the first N images.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Fixed-point reference logits of one image, as one JSON object.
    Reference {
        #[command(flatten)]
        args: ModelArgs,
        /// IDX image file.
        #[arg(long)]
        idx: PathBuf,
        /// Image index.
        #[arg(long)]
        index: usize,
        /// IDX label file (default: the images path with `images-idx3` replaced by `labels-idx1`).
        #[arg(long)]
        labels: Option<PathBuf>,
    },
}

/// Parse arguments and run; errors are printed, never panicked.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Model { command } => match command {
            ModelCommand::Inspect(a) => inspect(&a),
            ModelCommand::Calibrate(a) => calibrate(&a),
            ModelCommand::Eval { args, data, limit } => eval(&args, &data, limit),
            ModelCommand::Reference { args, idx, index, labels } => reference(&args, &idx, index, labels),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn model_id(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

/// Import, merge and quantise: with the committed `<model>.quant.json` when it exists and no
/// `--calib` or `--failure-log2` is given, else calibrating as documented on [`ModelArgs`].
fn load_for_cli(a: &ModelArgs) -> Result<LoadedModel, Box<dyn std::error::Error>> {
    let recalibrate = a.calib.is_some() || a.failure_log2 != model::merge::FAILURE_TARGET_LOG2;
    if !recalibrate && model::quant_path(&a.model).exists() {
        return Ok(model::load_calibrated(&a.model, &model_id(&a.model))?);
    }
    calibrate_for_cli(a)
}

/// Import, merge and choose the fixed-point parameters from calibration data.
fn calibrate_for_cli(a: &ModelArgs) -> Result<LoadedModel, Box<dyn std::error::Error>> {
    let (path, calib) = (a.model.as_path(), a.calib.as_deref());
    let imported = model::onnx::import_path(path)?;
    let default = Path::new(DEFAULT_TRAIN_IMAGES);
    let images = match calib {
        Some(p) => Some(p),
        None if imported.input.len() == 784 && default.exists() => Some(default),
        None => None,
    };
    let cal = model::calibration_inputs(
        imported.input,
        images,
        if images.is_some() { CALIBRATION_COUNT } else { 256 },
    )?;
    Ok(model::load(path, &model_id(path), &cal, a.failure_log2)?)
}

fn calibrate(a: &ModelArgs) -> Res {
    let m = calibrate_for_cli(a)?;
    let path = model::quant_path(&a.model);
    std::fs::write(&path, serde_json::to_string_pretty(&m.report)? + "\n")?;
    println!(
        "wrote {}: frac_bits {}, truncate_bits {:?}, shifts {:?}, failure bound 2^{:.2} ({} calibration inputs)",
        path.display(),
        m.report.frac_bits,
        m.report.truncate_bits,
        m.report.shifts,
        m.report.failure_log2,
        m.report.calibration_inputs
    );
    println!("architecture hash {}", hex(&m.merged.arch.hash()));
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn inspect(a: &ModelArgs) -> Res {
    let m = load_for_cli(a)?;
    println!("model {}  input {:?}", a.model.display(), m.imported.input);
    println!("\nbefore merging: {} ONNX nodes", m.imported.nodes.len());
    let mut shape = m.imported.input;
    for (i, stage) in m.imported.stages.iter().enumerate() {
        for op in stage {
            println!("  {}", op.describe(shape));
            shape = op.output_shape(shape);
        }
        if let Some(q) = m.imported.activations.get(i) {
            let simple = q.a.iter().all(|&v| v == 1.0) && q.b.iter().chain(&q.c).all(|&v| v == 0.0);
            println!(
                "  {} ({} elements)",
                if simple { "square y^2" } else { "quadratic a*y^2+b*y+c" },
                q.a.len()
            );
        }
    }
    println!(
        "\nafter merging: {} affine maps, frac_bits = {}",
        m.merged.arch.maps.len(),
        m.merged.arch.frac_bits
    );
    for (i, spec) in m.merged.arch.maps.iter().enumerate() {
        println!(
            "  A{}: {:?}  truncate_bits = {}, rescale 2^{}, measured max |y| = {:.3}",
            i + 1,
            spec.kind,
            spec.truncate_bits,
            -m.report.shifts[i],
            m.report.measured_max[i]
        );
        if i + 1 < m.merged.arch.maps.len() {
            println!("  square ({} elements)", spec.kind.output_len());
        }
    }
    let hash = hex(&m.merged.arch.hash());
    println!("architecture hash {hash}");
    let (b, f) = (cost::before(&m.imported), cost::after(&m.merged));
    println!("\n{:<28}{:>14}{:>14}", "cost (n = 8192)", "before", "after");
    let rows: [(&str, u64, u64); 6] = [
        ("affine maps", b.affine_maps, f.affine_maps),
        ("HE ct-pt poly products", b.he_poly_products, f.he_poly_products),
        ("HE ct-pt SIMD products", b.he_simd_products, f.he_simd_products),
        ("HE additions", b.he_additions, f.he_additions),
        ("truncations", b.truncations, f.truncations),
        ("online multiplications", b.online_mults, f.online_mults),
    ];
    for (name, x, y) in rows {
        println!("{name:<28}{x:>14}{y:>14}");
    }
    println!(
        "\ntruncation failure bound per inference: 2^{:.2} (target <= 2^-30; largest per-input sums over {} calibration inputs x margin {})",
        m.report.failure_log2,
        m.report.calibration_inputs,
        model::merge::SAFETY_MARGIN
    );
    Ok(())
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")].into_iter().map(|n| dir.join(n)).find(|p| p.exists())
}

fn eval(a: &ModelArgs, data: &Path, limit: Option<usize>) -> Res {
    let m = load_for_cli(a)?;
    let img_path = find(data, "t10k-images-idx3-ubyte").ok_or("no t10k-images-idx3-ubyte[.gz] in --data")?;
    let lbl_path = find(data, "t10k-labels-idx1-ubyte").ok_or("no t10k-labels-idx1-ubyte[.gz] in --data")?;
    let images = idx::read_images(&img_path)?;
    let labels = idx::read_labels(&lbl_path)?;
    let n = images.len().min(labels.len()).min(limit.unwrap_or(usize::MAX));
    let bar = indicatif::ProgressBar::new(n as u64);
    let threads = std::thread::available_parallelism().map_or(2, |v| v.get());
    let chunk = n.div_ceil(threads).max(1);
    let totals = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let (m, images, labels, bar) = (&m, &images, &labels, &bar);
                s.spawn(move || -> Result<[usize; 3], String> {
                    let mut t = [0usize; 3];
                    for (k, &label) in labels.iter().enumerate().take((start + chunk).min(n)).skip(start) {
                        let x = images.get(k).map_err(|e| e.to_string())?;
                        let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                        let pf = argmax(&m.float.forward(&xf));
                        let px_in = images.pixels(k).ok_or("image index out of range")?;
                        let enc = FixedPointReference::encode_pixels(&m.merged, px_in);
                        let fixed = FixedPointReference::trace_encoded(&m.merged, enc)
                            .map_err(|e| e.to_string())?
                            .maps
                            .pop()
                            .unwrap_or_default();
                        let px = argmax(&FixedPointReference::decode(&m.merged, &fixed));
                        let y = label as usize;
                        t[0] += (pf == y) as usize;
                        t[1] += (px == y) as usize;
                        t[2] += (pf == px) as usize;
                        bar.inc(1);
                    }
                    Ok(t)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "worker panicked".to_string())?)
            .collect::<Result<Vec<_>, _>>()
    })?;
    bar.finish_and_clear();
    let sum = totals.iter().fold([0; 3], |a, t| [a[0] + t[0], a[1] + t[1], a[2] + t[2]]);
    let pct = |v: usize| 100.0 * v as f64 / n.max(1) as f64;
    println!(
        "{}: {n} images  f32 accuracy {:.2} %  fixed-point accuracy {:.2} %  agreement {:.2} %  (frac_bits {}, truncate_bits {:?}, failure bound 2^{:.2})",
        model_id(&a.model),
        pct(sum[0]),
        pct(sum[1]),
        pct(sum[2]),
        m.merged.arch.frac_bits,
        m.report.truncate_bits,
        m.report.failure_log2
    );
    Ok(())
}

fn reference(a: &ModelArgs, img: &Path, index: usize, labels: Option<PathBuf>) -> Res {
    let m = load_for_cli(a)?;
    let images = idx::read_images(img)?;

    let lbl_path = labels.or_else(|| {
        let s = img.to_string_lossy().replace("images-idx3", "labels-idx1");
        let p = PathBuf::from(s);
        (p != img && p.exists()).then_some(p)
    });
    let label = match lbl_path {
        Some(p) => {
            let l = idx::read_labels(&p)?;
            Some(*l.get(index).ok_or(idx::IdxError::Index { index, count: l.len() })?)
        }
        None => None,
    };
    let pixels = images.pixels(index).ok_or(idx::IdxError::Index { index, count: images.len() })?;
    let logits =
        FixedPointReference::trace_encoded(&m.merged, FixedPointReference::encode_pixels(&m.merged, pixels))?
            .maps
            .pop()
            .unwrap_or_default();

    let reals = FixedPointReference::decode(&m.merged, &logits);
    let out = serde_json::json!({
        "model": model_id(&a.model),
        "index": index,
        "label": label,
        "frac_bits": m.merged.arch.frac_bits,
        "logits_int": logits.iter().map(|v| v.to_i64_centered()).collect::<Vec<_>>(),
        "logits": reals,
        "prediction": argmax(&reals),
    });
    println!("{out}");
    Ok(())
}

/// Load every configured model with its committed fixed-point parameters.
pub fn load_served_models(
    config: &crate::config::ServerConfig,
) -> Result<Vec<crate::session::ServedModel>, Box<dyn std::error::Error>> {
    let mut models = Vec::new();
    for entry in &config.models {
        let m = model::load_calibrated(&entry.path, &entry.id)?;
        let bound = m.report.failure_log2;
        tracing::info!(model = %entry.id, hash = %hex(&m.merged.arch.hash()), maps = m.merged.maps.len(), failure_log2 = bound, "model loaded");
        if bound > model::merge::FAILURE_TARGET_LOG2 {
            tracing::warn!(model = %entry.id, failure_log2 = bound, "calibrated for a truncation failure bound weaker than the default 2^-30 (DESIGN §3)");
        }
        models.push(crate::session::ServedModel::from_merged(&m.merged));
    }
    Ok(models)
}

fn serve(config_path: &Path) -> Res {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = crate::config::ServerConfig::load(config_path)?;
    let models = load_served_models(&config)?;
    let state = std::sync::Arc::new(crate::session::ServerState::new(models, config.limits));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        crate::daemon::serve(listener, state, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("interrupt: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
