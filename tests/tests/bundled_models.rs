//! The bundled models end to end: import + merging against an independent evaluation (tract) of
//! the ONNX file, the committed fixed-point parameters, and private inference over loopback TCP
//! on the 200 committed Fashion-MNIST test images against the fixed-point reference.
//!
//! Every inference uses a ticket made by HE preprocessing over the same connection: the whole
//! protocol, as deployed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloud_server::config::Limits;
use cloud_server::model::{idx, load_calibrated, reference::argmax, FixedPointReference};
use cloud_server::session::ServedModel;
use edge_client::online::infer;
use edge_client::preprocess::preprocess;
use edge_client::tickets::Ticket;
use edge_client::transport::Connection;
use integration_tests::{check_against_reference, TestServer};
use rand::SeedableRng;
use tract_onnx::prelude::*;

const MODELS: [&str; 3] = ["mlp-sq", "cryptonets-sq", "minionn-sq"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path(id: &str) -> PathBuf {
    root().join(format!("cloud-server/models/{id}.onnx"))
}

fn sample() -> (idx::Images, Vec<u8>) {
    let images =
        idx::read_images(&root().join("edge-client/data/fashion-mnist-t10k-200-images-idx3-ubyte")).unwrap();
    let labels =
        idx::read_labels(&root().join("edge-client/data/fashion-mnist-t10k-200-labels-idx1-ubyte")).unwrap();
    assert_eq!(images.len(), 200);
    (images, labels)
}

#[test]
fn merged_models_equal_tract_on_the_unmerged_onnx() {
    let (images, _) = sample();
    for id in MODELS {
        let loaded = load_calibrated(&model_path(id), id).unwrap();
        assert!(
            loaded.report.failure_log2 <= -30.0,
            "{id}: committed bound 2^{}",
            loaded.report.failure_log2
        );
        let plan = tract_onnx::onnx()
            .model_for_path(model_path(id))
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        for k in 0..5 {
            let x = images.get(k).unwrap();
            let t = Tensor::from_shape(&[1, 1, 28, 28], &x).unwrap();
            let out = plan.run(tvec!(t.into())).unwrap();
            let want: Vec<f64> =
                out[0].to_plain_array_view::<f32>().unwrap().iter().map(|&v| v as f64).collect();
            let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let got = loaded.float.forward(&xf);
            let scale = want.iter().fold(0.0f64, |a, b| a.max(b.abs())).max(1.0);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * scale, "{id} image {k}: merged {g} vs tract {w}");
            }
        }
    }
}

#[test]
fn private_inference_of_the_bundled_models_matches_the_reference_on_200_images() {
    let (images, labels) = sample();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    for id in MODELS {
        let merged = load_calibrated(&model_path(id), id).unwrap().merged;
        let server = TestServer::start(vec![ServedModel::from_merged(&merged)], Limits::default());
        let mut conn = Connection::connect(server.addr, Duration::from_secs(60)).unwrap();
        let arch = conn.hello(id, Some(merged.arch.hash())).unwrap();
        let (mut agree, mut correct) = (0, 0);
        for (k, &truth) in labels.iter().enumerate() {
            let (bytes, _) = preprocess(&mut conn, &arch, &mut rng).unwrap();
            let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).unwrap();
            let ticket = Ticket { header, bytes };
            let input = FixedPointReference::encode_pixels(&merged, images.pixels(k).unwrap());
            let logits = infer(&mut conn, &arch, &ticket, &input).unwrap();
            let got: Vec<i64> = logits.iter().map(|v| v.to_i64_centered()).collect();
            let pw = check_against_reference(&merged, images.pixels(k).unwrap(), &got)
                .unwrap_or_else(|e| panic!("{id} image {k}: {e}"));
            let pg = argmax(&got);
            agree += usize::from(pg == pw);
            correct += usize::from(pg == truth as usize);
        }
        println!("{id}: 200 private inferences, {agree} agree with the reference, {correct} correct");
        assert_eq!(server.state.tickets.usage().0, 0);
    }
}
