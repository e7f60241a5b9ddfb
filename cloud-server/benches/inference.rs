//! Plaintext inference time per image: the f64 merged model and the fixed-point F_p reference.
//!
//! A bench binary (`harness = false`), not a test: `cargo bench -p cloud-server --bench inference
//! -- <model.onnx>...` (default: the test fixtures). Calibration uses seeded random inputs in
//! [0, 1], so no data set is needed.

use cloud_server::model::{self, FixedPointReference};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn time_per_call(mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(2) || n < 3 {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn main() {
    let args: Vec<PathBuf> =
        std::env::args().skip(1).filter(|a| !a.starts_with("--")).map(PathBuf::from).collect();
    let paths = if args.is_empty() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        ["tiny-cnn", "tiny-mlp", "tiny-quadconv"].iter().map(|n| dir.join(format!("{n}.onnx"))).collect()
    } else {
        args
    };
    println!("{:<20}{:>16}{:>20}", "model", "f64 merged", "fixed-point F_p");
    for path in paths {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let imp = match model::onnx::import_path(&path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                continue;
            }
        };
        let cal = match model::calibration_inputs(imp.input, None, 64) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                continue;
            }
        };
        let loaded = match model::load(&path, &name, &cal, model::merge::FAILURE_TARGET_LOG2) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                continue;
            }
        };
        let x = &cal[0];
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let tf = time_per_call(|| {
            std::hint::black_box(loaded.float.forward(std::hint::black_box(x)));
        });
        let tx = time_per_call(|| {
            std::hint::black_box(FixedPointReference::logits(&loaded.merged, std::hint::black_box(&xf)).ok());
        });
        println!("{name:<20}{:>16.3?}{:>20.3?}", tf, tx);
    }
}
