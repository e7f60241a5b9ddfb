//! The fixed-point plaintext reference: EXACTLY the arithmetic the protocol performs, over F_p.
//!
//! Every protocol test compares against this oracle. Input `x` is encoded as
//! `round(x * 2^f) mod p`; each map computes `W_int x + b_int` over F_p (direct loops,
//! [`linear_reference`]) and truncates by its `truncate_bits`; between maps the square `y * y` is
//! truncated by `frac_bits`. The protocol's shared truncation equals this up to 1 ulp per element
//! (and fails with the probability bounded by the quantiser), so the protocol output is compared
//! with a tolerance; this reference itself is deterministic.

use super::merged::{linear_reference, MergedModel, ModelError};
use core_nostd::Fp;

/// Plaintext reference truncation: `floor(x_signed / 2^d)` of the centred value. This is exactly
/// `core_nostd::truncation::truncate_reference`.
fn truncate(x: Fp, d: u8) -> Fp {
    Fp::from_i64(x.to_i64_centered() >> d)
}

/// The intermediates of one fixed-point inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The encoded input.
    pub input: Vec<Fp>,
    /// Per map: its output after truncation (the last one is the logits).
    pub maps: Vec<Vec<Fp>>,
    /// Per square layer: the truncated square (the next map's input).
    pub squares: Vec<Vec<Fp>>,
}

/// The fixed-point oracle.
pub struct FixedPointReference;

impl FixedPointReference {
    /// Encode a real input with `frac_bits` fraction bits.
    pub fn encode(model: &MergedModel, x: &[f32]) -> Vec<Fp> {
        let s = (1u64 << model.arch.frac_bits) as f64;
        x.iter().map(|&v| Fp::from_i64((v as f64 * s).round() as i64)).collect()
    }

    /// Encode 8-bit pixels (`pixel / 255`) exactly as every client does
    /// (`core_nostd::fixed_point::encode_pixel`).
    pub fn encode_pixels(model: &MergedModel, pixels: &[u8]) -> Vec<Fp> {
        let f = u32::from(model.arch.frac_bits);
        pixels.iter().map(|&p| core_nostd::fixed_point::encode_pixel(p, f)).collect()
    }

    /// Run the model on an already encoded input, keeping every intermediate.
    pub fn trace_encoded(model: &MergedModel, input: Vec<Fp>) -> Result<Trace, ModelError> {
        Self::trace_with(model, input, |i, x| {
            linear_reference(&model.arch.maps[i].kind, &model.maps[i].weights, x)
        })
    }

    /// The same arithmetic with `W_i x` computed by `linear(i, x)` (any engine that is exact
    /// over F_p, e.g. the server's): plaintext inference of the same network, for benchmarks.
    pub fn trace_with(
        model: &MergedModel,
        input: Vec<Fp>,
        linear: impl Fn(usize, &[Fp]) -> Vec<Fp>,
    ) -> Result<Trace, ModelError> {
        model.validate()?;
        if input.len() != model.arch.input_len() {
            return Err(ModelError::InputLength { expected: model.arch.input_len(), found: input.len() });
        }
        let last = model.maps.len() - 1;
        let mut x = input.clone();
        let mut trace = Trace { input, maps: vec![], squares: vec![] };
        for (i, (spec, w)) in model.arch.maps.iter().zip(&model.maps).enumerate() {
            let acc = linear(i, &x);
            let y: Vec<Fp> = acc
                .iter()
                .zip(&w.bias)
                .map(|(&a, &b)| truncate(a + Fp::from_i64(b), spec.truncate_bits))
                .collect();
            if i < last {
                x = y.iter().map(|&v| truncate(v * v, model.arch.frac_bits)).collect();
                trace.squares.push(x.clone());
            }
            trace.maps.push(y);
        }
        Ok(trace)
    }

    /// Run the model on a real input, keeping every intermediate.
    pub fn trace(model: &MergedModel, x: &[f32]) -> Result<Trace, ModelError> {
        Self::trace_encoded(model, Self::encode(model, x))
    }

    /// The logits as field elements (`frac_bits` fraction bits, centred representation).
    pub fn logits(model: &MergedModel, x: &[f32]) -> Result<Vec<Fp>, ModelError> {
        Ok(Self::trace(model, x)?.maps.pop().unwrap_or_default())
    }

    /// Per logit, a rigorous bound (in ulps) on `|private - reference|` for this input. Each
    /// local truncation of the protocol gives the reference value or one more ulp (except with
    /// the failure probability of `core_nostd::truncation`); the error vector is propagated
    /// exactly: through a map as `|W| e / 2^t` plus the new truncation's ulp (and one for the
    /// floor of the division), through a square as `(2 |y| e + e^2) / 2^f` plus one, with `y`
    /// this input's reference pre-activation.
    pub fn error_bound(model: &MergedModel, input: &[Fp]) -> Result<Vec<i64>, ModelError> {
        let trace = Self::trace_encoded(model, input.to_vec())?;
        let f = u32::from(model.arch.frac_bits);
        let last = model.maps.len() - 1;
        let mut err = vec![Fp::ZERO; input.len()];
        let mut out = Vec::new();
        for (i, (spec, w)) in model.arch.maps.iter().zip(&model.maps).enumerate() {
            let t = u32::from(spec.truncate_bits);
            let abs_w: Vec<i64> = w.weights.iter().map(|w| w.abs()).collect();
            let werr = linear_reference(&spec.kind, &abs_w, &err);
            let e_map: Vec<i64> = werr.iter().map(|e| (e.to_i64_centered() >> t) + 2).collect();
            if i == last {
                out = e_map;
                break;
            }
            err = trace.maps[i]
                .iter()
                .zip(&e_map)
                .map(|(y, &e)| {
                    let y = y.to_i64_centered().unsigned_abs() as i128;
                    let e = e as i128;
                    let bound = ((2 * y * e + e * e) >> f) + 2;
                    Fp::from_i64(bound.min(i64::MAX as i128) as i64)
                })
                .collect();
        }
        Ok(out)
    }

    /// Decode field elements with `frac_bits` fraction bits to reals.
    pub fn decode(model: &MergedModel, v: &[Fp]) -> Vec<f64> {
        let s = (1u64 << model.arch.frac_bits) as f64;
        v.iter().map(|x| x.to_i64_centered() as f64 / s).collect()
    }
}

/// Index of the largest value (first on ties).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
