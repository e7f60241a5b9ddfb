//! Import, merging and reference tests on the small ONNX fixtures of
//! `tools/gen_model_fixtures.py` (torch-exported; `<name>.expected.json` holds torch's outputs).

use cloud_server::model::{
    self, graph::Imported, merge, onnx::ImportError, reference::argmax, FixedPointReference,
};
use std::path::PathBuf;
use tract_onnx::prelude::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn expected(name: &str) -> Vec<(Vec<f64>, Vec<f64>)> {
    let text = std::fs::read_to_string(fixture(&format!("{name}.expected.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let f =
                |k: &str| c[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>();
            (f("input"), f("logits"))
        })
        .collect()
}

/// tract's own evaluation of the unmerged ONNX graph.
fn tract_eval(name: &str, imp: &Imported, x: &[f64]) -> Vec<f64> {
    let model = tract_onnx::onnx()
        .model_for_path(fixture(&format!("{name}.onnx")))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let s = imp.input;
    let data: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let shape: Vec<usize> = if s.height == 1 && s.width == 1 {
        vec![1, s.channels as usize]
    } else {
        vec![1, s.channels as usize, s.height as usize, s.width as usize]
    };
    let t = Tensor::from_shape(&shape, &data).unwrap();
    let out = model.run(tvec!(t.into())).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().map(|&v| v as f64).collect()
}

fn assert_close(a: &[f64], b: &[f64], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * scale, "{what}: element {i}: {x} vs {y}");
    }
}

const VALID: [&str; 3] = ["tiny-cnn", "tiny-mlp", "tiny-quadconv"];

#[test]
fn unsupported_op_is_named() {
    let err = model::onnx::import_path(&fixture("bad-relu.onnx")).unwrap_err();
    match &err {
        ImportError::UnsupportedOp { op, node } => {
            assert_eq!(op, "Relu");
            assert!(!node.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("Relu"));
}

#[test]
fn dynamic_shape_is_rejected() {
    let err = model::onnx::import_path(&fixture("bad-dynamic.onnx")).unwrap_err();
    assert!(matches!(err, ImportError::DynamicShape(ref n) if n == "input"), "{err:?}");
}

#[test]
fn residual_add_is_rejected() {
    let err = model::onnx::import_path(&fixture("bad-residual.onnx")).unwrap_err();
    assert!(matches!(err, ImportError::Residual { ref op, .. } if op == "Add"), "{err:?}");
}

#[test]
fn merged_float_model_equals_unmerged_graph() {
    for name in VALID {
        let imp = model::onnx::import_path(&fixture(&format!("{name}.onnx"))).unwrap();
        let float = merge::merge_float(&imp).unwrap();
        assert_eq!(float.maps.len(), imp.activations.len() + 1, "{name}: one map per stage");
        for (x, torch) in expected(name) {
            let merged = float.forward(&x);
            assert_close(&merged, &torch, 1e-4, &format!("{name}: merged vs torch"));
            assert_close(&merged, &tract_eval(name, &imp, &x), 1e-4, &format!("{name}: merged vs tract"));
            assert_close(&imp.evaluate(&x), &torch, 1e-4, &format!("{name}: importer vs torch"));
        }
    }
}

#[test]
fn merging_reduces_the_fixture_to_the_expected_maps() {
    use core_nostd::arch::LinearKind;
    // tiny-cnn: [conv, avgpool, scale] sq [avgpool, conv] sq [flatten, dense, BN] quad [dense].
    let imp = model::onnx::import_path(&fixture("tiny-cnn.onnx")).unwrap();
    let float = merge::merge_float(&imp).unwrap();
    let kinds: Vec<_> = float.maps.iter().map(|m| m.kind).collect();
    assert!(
        matches!(kinds[0], LinearKind::Conv2d { kernel_h: 4, stride_h: 2, pad_h: 1, .. }),
        "{:?}",
        kinds[0]
    );
    assert!(
        matches!(kinds[1], LinearKind::Conv2d { kernel_h: 6, stride_h: 2, pad_h: 0, .. }),
        "{:?}",
        kinds[1]
    );
    assert!(matches!(kinds[2], LinearKind::Dense { inputs: 16, outputs: 6 }));
    assert!(matches!(kinds[3], LinearKind::Dense { inputs: 6, outputs: 4 }));
    // The learned quadratic really has linear and constant terms, so the rewrite is exercised.
    let q = &imp.activations[2];
    assert!(q.b.iter().any(|&b| b.abs() > 1e-3) && q.c.iter().any(|&c| c.abs() > 1e-3));
}

#[test]
fn fixed_point_oracle_tracks_the_float_model_within_the_failure_budget() {
    for name in VALID {
        let cases = expected(name);
        let imp = model::onnx::import_path(&fixture(&format!("{name}.onnx"))).unwrap();
        let cal = model::calibration_inputs(imp.input, None, 64).unwrap();
        let loaded =
            model::load(&fixture(&format!("{name}.onnx")), name, &cal, model::merge::FAILURE_TARGET_LOG2)
                .unwrap();
        assert!(loaded.report.failure_log2 <= -30.0, "{name}: bound 2^{}", loaded.report.failure_log2);
        for (x, torch) in &cases {
            // The rescaled twin computes the same function.
            assert_close(&loaded.scaled.forward(x), torch, 1e-4, &format!("{name}: rescaled"));
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let trace = FixedPointReference::trace(&loaded.merged, &xf).unwrap();
            assert_eq!(trace.maps.len(), loaded.merged.maps.len());
            assert_eq!(trace.squares.len(), loaded.merged.maps.len() - 1);
            let fixed = FixedPointReference::decode(&loaded.merged, trace.maps.last().unwrap());
            // Quantisation error: a few percent of the logit range at these tiny bit widths.
            assert_close(&fixed, torch, 0.05, &format!("{name}: fixed vs float"));
            assert_eq!(
                FixedPointReference::logits(&loaded.merged, &xf).unwrap(),
                *trace.maps.last().unwrap()
            );
            let _ = argmax(&fixed);
        }
    }
}

#[test]
fn calibrate_trades_the_failure_bound_for_fraction_bits_on_request() {
    let dir = std::env::temp_dir().join(format!("calibrate-failure-bound-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("tiny-cnn.onnx");
    std::fs::copy(fixture("tiny-cnn.onnx"), &onnx).unwrap();
    let calibrate = |bound: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cloud-server"))
            .args(["model", "calibrate"])
            .arg(&onnx)
            .args(["--failure-log2", bound])
            .output()
            .unwrap()
    };
    let report = |bound: &str| -> model::QuantReport {
        let out = calibrate(bound);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(&std::fs::read_to_string(model::quant_path(&onnx)).unwrap()).unwrap()
    };
    let strict = report("-30");
    let weak = report("-20");
    assert!(
        strict.failure_log2 <= -30.0 && (-30.0..=-20.0).contains(&weak.failure_log2),
        "{strict:?} {weak:?}"
    );
    let bits = |r: &model::QuantReport| {
        u32::from(r.frac_bits) + r.truncate_bits.iter().map(|&t| u32::from(t)).sum::<u32>()
    };
    assert!(bits(&weak) > bits(&strict), "{strict:?} {weak:?}");
    // A bound under which failures would be routine is refused, with the reason.
    let out = calibrate("-4");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failure bound 2^-4"), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
