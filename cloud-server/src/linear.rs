//! The server's online linear layers: `W x` over F_p with lazy reduction.
//!
//! Inputs are full 60-bit field elements but weights are small signed integers, so each product
//! `w * x` fits in 60 + 21 bits and a whole dot product of up to 2^40 terms fits in an `i128`:
//! the sum is reduced modulo p once per output instead of once per multiply-add. The result is
//! exactly `W x mod p` (checked against [`crate::model::merged::linear_reference`]). Outputs are
//! split over the available cores with `std::thread::scope` (no pool to manage; one map is a few
//! milliseconds of work, so spawning two scoped threads per map is cheap by comparison).

use core_nostd::arch::LinearKind;
use core_nostd::field::P;
use core_nostd::Fp;

use crate::inference::LinearLayers;
use crate::model::MergedModel;

/// Largest weight magnitude accepted: `|w| < 2^20`, so `|w x| < 2^80` and 2^40 terms fit in i128.
pub const MAX_WEIGHT: i64 = 1 << 20;

/// Why a model cannot use the lazy engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("map {map}: weight {weight} exceeds the engine bound 2^20")]
    WeightTooLarge { map: usize, weight: i64 },
}

/// `W x` for every map of a model, with lazy i128 accumulation.
#[derive(Debug)]
pub struct LazyLayers {
    model: MergedModel,
    threads: usize,
}

impl LazyLayers {
    pub fn new(model: MergedModel) -> Result<LazyLayers, EngineError> {
        for (map, w) in model.maps.iter().enumerate() {
            if let Some(&weight) = w.weights.iter().find(|w| w.abs() >= MAX_WEIGHT) {
                return Err(EngineError::WeightTooLarge { map, weight });
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        Ok(LazyLayers { model, threads })
    }
}

fn reduce(sum: i128) -> Fp {
    Fp::from_u64_reduced(sum.rem_euclid(P as i128) as u64)
}

/// Outputs `range` of `W x` for one map.
fn outputs(kind: &LinearKind, w: &[i64], x: &[Fp], range: std::ops::Range<usize>, out: &mut [Fp]) {
    match *kind {
        LinearKind::Dense { inputs, .. } => {
            let n = inputs as usize;
            for (o, y) in range.zip(out.iter_mut()) {
                let row = &w[o * n..(o + 1) * n];
                let sum: i128 = row.iter().zip(x).map(|(&w, x)| w as i128 * x.value() as i128).sum();
                *y = reduce(sum);
            }
        }
        LinearKind::Conv2d { input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, .. } => {
            let os = kind.output_shape();
            let (ci, h, wd) = (input.channels as usize, input.height as i64, input.width as i64);
            let (kh, kw) = (kernel_h as usize, kernel_w as usize);
            let per = (os.height * os.width) as usize;
            for (idx, y) in range.zip(out.iter_mut()) {
                let (o, r) = (idx / per, idx % per);
                let (oi, oj) = ((r / os.width as usize) as i64, (r % os.width as usize) as i64);
                let mut sum = 0i128;
                for c in 0..ci {
                    let plane = &x[c * (h * wd) as usize..(c + 1) * (h * wd) as usize];
                    for p in 0..kh {
                        let i = oi * stride_h as i64 + p as i64 - pad_h as i64;
                        if i < 0 || i >= h {
                            continue;
                        }
                        let wrow = &w[((o * ci + c) * kh + p) * kw..((o * ci + c) * kh + p + 1) * kw];
                        for (q, &wv) in wrow.iter().enumerate() {
                            let j = oj * stride_w as i64 + q as i64 - pad_w as i64;
                            if j < 0 || j >= wd {
                                continue;
                            }
                            sum += wv as i128 * plane[(i * wd + j) as usize].value() as i128;
                        }
                    }
                }
                *y = reduce(sum);
            }
        }
    }
}

impl LinearLayers for LazyLayers {
    fn apply(&self, map: usize, x: &[Fp]) -> Vec<Fp> {
        let kind = self.model.arch.maps[map].kind;
        let w = &self.model.maps[map].weights;
        let n = kind.output_len();
        let mut y = vec![Fp::ZERO; n];
        let chunk = n.div_ceil(self.threads.max(1)).max(1);
        std::thread::scope(|s| {
            let mut parts = y.chunks_mut(chunk).enumerate();
            // The calling thread takes the first chunk, scoped threads the others.
            let first = parts.next();
            for (k, part) in parts {
                let range = k * chunk..k * chunk + part.len();
                s.spawn(move || outputs(&kind, w, x, range, part));
            }
            if let Some((_, part)) = first {
                outputs(&kind, w, x, 0..part.len(), part);
            }
        });
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merged::{linear_reference, weight_count};
    use crate::model::AffineWeights;
    use core_nostd::arch::{AffineSpec, Architecture, Shape};
    use rand::{Rng, SeedableRng};

    #[test]
    fn lazy_layers_equal_the_direct_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..30 {
            let (c, h, w) =
                (rng.random_range(1..5u32), rng.random_range(3..12u32), rng.random_range(3..12u32));
            let pad = rng.random_range(0..3u32);
            let k = rng.random_range(1..=5u32).min(h + 2 * pad).min(w + 2 * pad);
            let s = rng.random_range(1..3u32);
            let conv = LinearKind::Conv2d {
                input: Shape::new(c, h, w),
                out_channels: rng.random_range(1..6),
                kernel_h: k,
                kernel_w: k,
                stride_h: s,
                stride_w: s,
                pad_h: pad,
                pad_w: pad,
            };
            let dense =
                LinearKind::Dense { inputs: rng.random_range(1..300), outputs: rng.random_range(1..40) };
            for kind in [conv, dense] {
                let weights: Vec<i64> = (0..weight_count(&kind))
                    .map(|_| rng.random_range(-(MAX_WEIGHT - 1)..MAX_WEIGHT))
                    .collect();
                let mut maps = heapless::Vec::new();
                maps.push(AffineSpec { kind, truncate_bits: 4 }).unwrap();
                let arch = Architecture {
                    model_id: "t".try_into().unwrap(),
                    input: Shape::flat(kind.input_len() as u32),
                    maps,
                    frac_bits: 8,
                };
                let model = MergedModel {
                    arch,
                    maps: vec![AffineWeights { weights: weights.clone(), bias: vec![0; kind.output_len()] }],
                };
                let engine = LazyLayers::new(model).unwrap();
                // Worst-case inputs (p - 1) and uniform ones.
                for x in [
                    vec![Fp::new(P - 1).unwrap(); kind.input_len()],
                    (0..kind.input_len()).map(|_| core_nostd::mask::uniform_fp(&mut rng)).collect(),
                ] {
                    assert_eq!(engine.apply(0, &x), linear_reference(&kind, &weights, &x), "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn oversized_weights_are_refused() {
        let kind = LinearKind::Dense { inputs: 1, outputs: 1 };
        let mut maps = heapless::Vec::new();
        maps.push(AffineSpec { kind, truncate_bits: 4 }).unwrap();
        let arch =
            Architecture { model_id: "t".try_into().unwrap(), input: Shape::flat(1), maps, frac_bits: 8 };
        let model =
            MergedModel { arch, maps: vec![AffineWeights { weights: vec![MAX_WEIGHT], bias: vec![0] }] };
        assert_eq!(
            LazyLayers::new(model).err(),
            Some(EngineError::WeightTooLarge { map: 0, weight: MAX_WEIGHT })
        );
    }
}
