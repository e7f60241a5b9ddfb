//! Operation counts before and after merging, under a simple, stated cost model.
//!
//! Cost model (n = `RING_DEGREE` = 8192 coefficients/slots per ciphertext):
//! * affine map with `I` inputs and `O` outputs, coefficient-packed (DESIGN §4 fast convolution):
//!   the input is packed into `ceil(I/n)` ciphertexts, the output occupies `ceil(O/n)`; every
//!   (input, output) ciphertext pair costs one ciphertext-plaintext polynomial product and one
//!   ciphertext addition (accumulation, the last one being the mask `- s_i`);
//! * element-wise layer over `N` elements (a square's Beaver-style preprocessing, or before merging
//!   a BatchNorm / scale / the `a*` and `b*` terms of a quadratic activation, whose coefficients
//!   are private to the server): `ceil(N/n)` SIMD ciphertext-plaintext products and as many
//!   additions; a pure shift is `ceil(N/n)` additions only; flatten/reshape is free;
//! * truncations: one per output element of every layer that multiplies by a fractional weight
//!   (map, pooling, scale, square);
//! * online multiplications: field multiplications of the client, 2 per activation element of a
//!   square (`yc^2` and `yc * d`); element-wise products by server-private constants are server
//!   work plus preprocessing, not client multiplications.
//!
//! "Before" treats every imported op as its own protocol layer (the unmerged graph run as is);
//! "after" is the merged `A_L ∘ sq ∘ ... ∘ A_1`.

use super::graph::{Imported, LinOp};
use super::merged::MergedModel;
use core_nostd::field::RING_DEGREE;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub affine_maps: u64,
    pub he_poly_products: u64,
    pub he_simd_products: u64,
    pub he_additions: u64,
    pub truncations: u64,
    pub online_mults: u64,
}

fn cts(len: usize) -> u64 {
    len.div_ceil(RING_DEGREE) as u64
}

impl Counts {
    fn map(&mut self, inputs: usize, outputs: usize) {
        self.affine_maps += 1;
        self.he_poly_products += cts(inputs) * cts(outputs);
        self.he_additions += cts(inputs) * cts(outputs);
        self.truncations += outputs as u64;
    }
    fn elementwise(&mut self, len: usize, multiplies: bool) {
        self.affine_maps += 1;
        if multiplies {
            self.he_simd_products += cts(len);
            self.truncations += len as u64;
        }
        self.he_additions += cts(len);
    }
    fn square(&mut self, len: usize) {
        self.he_simd_products += cts(len);
        self.he_additions += cts(len);
        self.truncations += len as u64;
        self.online_mults += 2 * len as u64;
    }
}

/// Counts of the unmerged model.
pub fn before(imp: &Imported) -> Counts {
    let mut c = Counts::default();
    let mut shape = imp.input;
    for (i, stage) in imp.stages.iter().enumerate() {
        for op in stage {
            let out = op.output_shape(shape);
            match op {
                LinOp::Conv { .. } | LinOp::AvgPool { .. } | LinOp::Dense { .. } => {
                    c.map(shape.len(), out.len())
                }
                LinOp::ChannelAffine { scale, .. } | LinOp::Elementwise { scale, .. } => {
                    c.elementwise(out.len(), scale.iter().any(|&s| s != 1.0))
                }
                LinOp::Reshape { .. } => {}
            }
            shape = out;
        }
        if let Some(q) = imp.activations.get(i) {
            let n = shape.len();
            c.square(n);
            if q.a.iter().any(|&a| a != 1.0) {
                c.elementwise(n, true);
            }
            if q.b.iter().any(|&b| b != 0.0) {
                c.elementwise(n, true);
            }
            if q.b.iter().chain(&q.c).any(|&v| v != 0.0) {
                c.he_additions += cts(n);
            }
        }
    }
    c
}

/// Counts of the merged model.
pub fn after(m: &MergedModel) -> Counts {
    let mut c = Counts::default();
    let last = m.arch.maps.len().saturating_sub(1);
    for (i, spec) in m.arch.maps.iter().enumerate() {
        c.map(spec.kind.input_len(), spec.kind.output_len());
        if i < last {
            c.square(spec.kind.output_len());
        }
    }
    c
}
