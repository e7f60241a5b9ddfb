//! Which value goes to which polynomial coefficient or SIMD slot in HE preprocessing.
//!
//! Pure index maths, `no_std` and allocation-free, so the host provisioner, the server and (later)
//! a microcontroller that runs its own HE all place values identically.
//!
//! # Linear maps: coefficient encoding, no rotations (Cheetah style)
//!
//! A convolution (and a dense map, seen as a convolution of an `N x 1 x 1` input with `1 x 1`
//! kernels) is computed as negacyclic polynomial products in `Z_p[X] / (X^n + 1)`. The input
//! channels are split in groups of `Cg`; with the padded input `h x w` and `T = Cg h w`:
//!
//! ```text
//! input  x[c][i][j]      -> ciphertext c / Cg,  coefficient (c % Cg) h w + (i + pad_h) w + (j + pad_w)
//! kernel w[o][c][p][q]   -> plaintext (o / m, c / Cg),
//!                           coefficient (o % m) S + O - (c % Cg) h w - p w - q
//! output y[o][oi][oj]    -> ciphertext o / m,   coefficient (o % m) S + O + (oi sh) w + (oj sw)
//! O = (Cg - 1) h w + (kh - 1) w + (kw - 1),   S = max(T, O + (h - kh) w + (w - kw) + 1)
//! ```
//!
//! Output ciphertext `o / m` is the sum over input groups of `input_g * kernel_(o/m, g)`. `m`
//! output channels share one product: the spacing `S` keeps their terms apart, and the largest
//! degree `(m - 1) S + O + T - 1` stays below `n`, so nothing wraps around. A strided conv reads the
//! stride-1 result at strided positions; every other coefficient of a returned ciphertext must be
//! masked with fresh randomness by the server (it would reveal more of `W r`). `Cg` is chosen to
//! minimise the ciphertexts moved (input groups + output ciphertexts), then the products.
//!
//! # Element-wise products: SIMD slots
//!
//! All activations of all square layers are laid end to end (layer 0 first) across
//! `ceil(total / n)` ciphertexts: activation `k` of the concatenation sits in slot `k % n` of
//! ciphertext `k / n`.

use crate::arch::{Architecture, LinearKind};

/// The coefficient layout of one affine map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearPacking {
    /// Ring degree.
    pub n: usize,
    /// Input channels, padded height and width.
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub c_out: usize,
    /// Strided output height and width.
    pub out_h: usize,
    pub out_w: usize,
    /// Input channels per input ciphertext (`Cg`).
    pub group_channels: usize,
    /// Output channels per output ciphertext (`m`).
    pub per_product: usize,
    /// Distance between the output channels of one product (`S`).
    pub spacing: usize,
    /// Degree of output `(0, 0)` of the first channel of a product (`O`).
    pub offset: usize,
}

/// Where a value lives: ciphertext (or plaintext) index and coefficient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub ct: usize,
    pub coeff: usize,
}

/// Where a kernel weight lives: output ciphertext, input group, coefficient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSlot {
    pub out_ct: usize,
    pub group: usize,
    pub coeff: usize,
}

impl LinearPacking {
    fn with_groups(kind: &LinearKind, n: usize, cg: usize) -> Option<LinearPacking> {
        let (c_in, ih, iw, kh, kw, sh, sw, ph, pw, c_out) = match *kind {
            LinearKind::Conv2d {
                input,
                out_channels,
                kernel_h,
                kernel_w,
                stride_h,
                stride_w,
                pad_h,
                pad_w,
            } => (
                input.channels as usize,
                input.height as usize,
                input.width as usize,
                kernel_h as usize,
                kernel_w as usize,
                stride_h as usize,
                stride_w as usize,
                pad_h as usize,
                pad_w as usize,
                out_channels as usize,
            ),
            LinearKind::Dense { inputs, outputs } => {
                (inputs as usize, 1, 1, 1, 1, 1, 1, 0, 0, outputs as usize)
            }
        };
        let (h, w) = (ih.checked_add(2 * ph)?, iw.checked_add(2 * pw)?);
        if cg == 0 || cg > c_in || kh == 0 || kw == 0 || kh > h || kw > w || sh == 0 || sw == 0 {
            return None;
        }
        let hw = h.checked_mul(w)?;
        let t = cg.checked_mul(hw)?;
        let offset = (cg - 1) * hw + (kh - 1) * w + (kw - 1);
        let spacing = t.max(offset + (h - kh) * w + (w - kw) + 1);
        if offset + t > n {
            return None;
        }
        let per_product = ((n - offset - t) / spacing + 1).min(c_out);
        Some(LinearPacking {
            n,
            c_in,
            h,
            w,
            pad_h: ph,
            pad_w: pw,
            kh,
            kw,
            sh,
            sw,
            c_out,
            out_h: (h - kh) / sh + 1,
            out_w: (w - kw) / sw + 1,
            group_channels: cg,
            per_product,
            spacing,
            offset,
        })
    }

    /// The layout with the fewest ciphertexts moved for ring degree `n`, or `None` if even one
    /// input channel does not fit (`h w` too large: split spatially, not supported).
    pub fn plan(kind: &LinearKind, n: usize) -> Option<LinearPacking> {
        Self::plan_with_costs(kind, n, 1, 1)
    }

    /// The layout that moves the fewest bytes when an input ciphertext costs `input_cost` and an
    /// output ciphertext `output_cost` (ties: fewer products). An upload and a download
    /// ciphertext need not cost the same: the HE codec decides.
    pub fn plan_with_costs(
        kind: &LinearKind,
        n: usize,
        input_cost: usize,
        output_cost: usize,
    ) -> Option<LinearPacking> {
        let c_in = kind.input_len() / kind_hw(kind).max(1);
        let mut best: Option<LinearPacking> = None;
        for cg in 1..=c_in {
            let Some(p) = Self::with_groups(kind, n, cg) else { continue };
            let key = |p: &LinearPacking| {
                (p.input_ciphertexts() * input_cost + p.output_ciphertexts() * output_cost, p.products())
            };
            if best.as_ref().is_none_or(|b| key(&p) < key(b)) {
                best = Some(p);
            }
        }
        best
    }

    /// Input ciphertexts (input channel groups).
    pub fn input_ciphertexts(&self) -> usize {
        self.c_in.div_ceil(self.group_channels)
    }

    /// Output ciphertexts.
    pub fn output_ciphertexts(&self) -> usize {
        self.c_out.div_ceil(self.per_product)
    }

    /// Ciphertext x plaintext products.
    pub fn products(&self) -> usize {
        self.input_ciphertexts() * self.output_ciphertexts()
    }

    /// Where input element `(c, i, j)` (unpadded coordinates) goes.
    pub fn input_slot(&self, c: usize, i: usize, j: usize) -> Slot {
        let cg = self.group_channels;
        Slot { ct: c / cg, coeff: (c % cg) * self.h * self.w + (i + self.pad_h) * self.w + (j + self.pad_w) }
    }

    /// Where input element `index` of the channel-major input vector goes.
    pub fn input_slot_of(&self, index: usize) -> Slot {
        let (ih, iw) = (self.h - 2 * self.pad_h, self.w - 2 * self.pad_w);
        let c = index / (ih * iw);
        let r = index % (ih * iw);
        self.input_slot(c, r / iw, r % iw)
    }

    /// Where kernel weight `w[o][c][p][q]` goes.
    pub fn kernel_slot(&self, o: usize, c: usize, p: usize, q: usize) -> KernelSlot {
        let cg = self.group_channels;
        KernelSlot {
            out_ct: o / self.per_product,
            group: c / cg,
            coeff: (o % self.per_product) * self.spacing + self.offset
                - (c % cg) * self.h * self.w
                - p * self.w
                - q,
        }
    }

    /// Where output `y[o][oi][oj]` (strided output coordinates) is read.
    pub fn output_slot(&self, o: usize, oi: usize, oj: usize) -> Slot {
        Slot {
            ct: o / self.per_product,
            coeff: (o % self.per_product) * self.spacing + self.offset + oi * self.sh * self.w + oj * self.sw,
        }
    }

    /// Where output element `index` of the channel-major output vector is read.
    pub fn output_slot_of(&self, index: usize) -> Slot {
        let per = self.out_h * self.out_w;
        let o = index / per;
        let r = index % per;
        self.output_slot(o, r / self.out_w, r % self.out_w)
    }
}

fn kind_hw(kind: &LinearKind) -> usize {
    match *kind {
        LinearKind::Conv2d { input, .. } => input.height as usize * input.width as usize,
        LinearKind::Dense { .. } => 1,
    }
}

/// SIMD placement of activation `index` of square layer `layer` (the output of map `layer`).
pub fn activation_slot(arch: &Architecture, layer: usize, index: usize, n: usize) -> Slot {
    let before: usize = arch.maps.iter().take(layer).map(|m| m.kind.output_len()).sum();
    let k = before + index;
    Slot { ct: k / n, coeff: k % n }
}

/// Number of SIMD ciphertexts holding all activations of `arch`.
pub fn activation_ciphertexts(arch: &Architecture, n: usize) -> usize {
    arch.activations().div_ceil(n)
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use crate::arch::Shape;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// Negacyclic product mod X^n + 1 over the integers.
    fn negacyclic(a: &[i64], b: &[i64]) -> Vec<i64> {
        let n = a.len();
        let mut out = vec![0i64; n];
        for (i, &x) in a.iter().enumerate() {
            if x == 0 {
                continue;
            }
            for (j, &y) in b.iter().enumerate() {
                if y == 0 {
                    continue;
                }
                let k = i + j;
                if k < n {
                    out[k] += x * y;
                } else {
                    out[k - n] -= x * y;
                }
            }
        }
        out
    }

    fn direct(kind: &LinearKind, w: &[i64], x: &[i64]) -> Vec<i64> {
        match *kind {
            LinearKind::Dense { inputs, outputs } => (0..outputs as usize)
                .map(|o| (0..inputs as usize).map(|i| w[o * inputs as usize + i] * x[i]).sum())
                .collect(),
            LinearKind::Conv2d {
                input,
                out_channels,
                kernel_h,
                kernel_w,
                stride_h,
                stride_w,
                pad_h,
                pad_w,
            } => {
                let out = kind.output_shape();
                let (c, h, wd) = (input.channels as i64, input.height as i64, input.width as i64);
                let mut y = Vec::new();
                for o in 0..out_channels as i64 {
                    for oi in 0..out.height as i64 {
                        for oj in 0..out.width as i64 {
                            let mut acc = 0;
                            for ci in 0..c {
                                for p in 0..kernel_h as i64 {
                                    for q in 0..kernel_w as i64 {
                                        let i = oi * stride_h as i64 + p - pad_h as i64;
                                        let j = oj * stride_w as i64 + q - pad_w as i64;
                                        if i < 0 || j < 0 || i >= h || j >= wd {
                                            continue;
                                        }
                                        let wi = (((o * c + ci) * kernel_h as i64 + p) * kernel_w as i64 + q)
                                            as usize;
                                        acc += w[wi] * x[(ci * h * wd + i * wd + j) as usize];
                                    }
                                }
                            }
                            y.push(acc);
                        }
                    }
                }
                y
            }
        }
    }

    /// Pack, multiply as polynomials, unpack: must equal the direct map.
    fn check(kind: LinearKind, n: usize, seed: u64) {
        let Some(p) = LinearPacking::plan(&kind, n) else { return };
        let mut s = seed | 1;
        let mut rnd = move |m: i64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % (2 * m as u64 + 1)) as i64 - m
        };
        let x: Vec<i64> = (0..kind.input_len()).map(|_| rnd(50)).collect();
        let nw = match kind {
            LinearKind::Dense { inputs, outputs } => inputs as usize * outputs as usize,
            LinearKind::Conv2d { input, out_channels, kernel_h, kernel_w, .. } => {
                (out_channels * input.channels * kernel_h * kernel_w) as usize
            }
        };
        let w: Vec<i64> = (0..nw).map(|_| rnd(9)).collect();
        let mut inputs = vec![vec![0i64; n]; p.input_ciphertexts()];
        for (k, &v) in x.iter().enumerate() {
            let sl = p.input_slot_of(k);
            inputs[sl.ct][sl.coeff] = v;
        }
        let mut kernels = vec![vec![vec![0i64; n]; p.input_ciphertexts()]; p.output_ciphertexts()];
        let (kh, kw) = (p.kh, p.kw);
        for o in 0..p.c_out {
            for c in 0..p.c_in {
                for a in 0..kh {
                    for b in 0..kw {
                        let sl = p.kernel_slot(o, c, a, b);
                        kernels[sl.out_ct][sl.group][sl.coeff] = w[((o * p.c_in + c) * kh + a) * kw + b];
                    }
                }
            }
        }
        let outputs: Vec<Vec<i64>> = (0..p.output_ciphertexts())
            .map(|oc| {
                let mut acc = vec![0i64; n];
                for (g, input) in inputs.iter().enumerate() {
                    for (a, v) in acc.iter_mut().zip(negacyclic(input, &kernels[oc][g])) {
                        *a += v;
                    }
                }
                acc
            })
            .collect();
        let want = direct(&kind, &w, &x);
        assert_eq!(want.len(), p.c_out * p.out_h * p.out_w);
        for (k, &v) in want.iter().enumerate() {
            let sl = p.output_slot_of(k);
            assert_eq!(outputs[sl.ct][sl.coeff], v, "{kind:?} output {k} plan {p:?}");
        }
    }

    #[test]
    fn bundled_model_shapes_fit_n_8192() {
        let minionn2 = LinearKind::Conv2d {
            input: Shape::new(16, 24, 24),
            out_channels: 16,
            kernel_h: 10,
            kernel_w: 10,
            stride_h: 2,
            stride_w: 2,
            pad_h: 0,
            pad_w: 0,
        };
        let p = LinearPacking::plan(&minionn2, 8192).unwrap();
        assert!(p.input_ciphertexts() + p.output_ciphertexts() <= 12, "{p:?}");
        // 1024 -> 100: 5 groups of 205 inputs, 38 outputs per product -> 5 + 3 ciphertexts.
        let dense = LinearPacking::plan(&LinearKind::Dense { inputs: 1024, outputs: 100 }, 8192).unwrap();
        assert_eq!((dense.input_ciphertexts(), dense.output_ciphertexts()), (5, 3), "{dense:?}");
    }

    #[test]
    fn fixed_shapes_match_the_direct_map() {
        check(LinearKind::Dense { inputs: 37, outputs: 11 }, 256, 1);
        check(LinearKind::Dense { inputs: 300, outputs: 5 }, 256, 2);
        let conv = LinearKind::Conv2d {
            input: Shape::new(3, 7, 5),
            out_channels: 4,
            kernel_h: 3,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 1,
            pad_h: 1,
            pad_w: 2,
        };
        check(conv, 512, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn random_convolutions_match_the_direct_map(
            c in 1u32..6, h in 3u32..9, w in 3u32..9, co in 1u32..5,
            k in 1u32..4, s in 1u32..3, pad in 0u32..3, seed in any::<u64>(),
        ) {
            let k = k.min(h + 2 * pad).min(w + 2 * pad);
            let conv = LinearKind::Conv2d {
                input: Shape::new(c, h, w), out_channels: co, kernel_h: k, kernel_w: k,
                stride_h: s, stride_w: s, pad_h: pad, pad_w: pad,
            };
            check(conv, 1024, seed);
        }

        #[test]
        fn random_dense_maps_match(inputs in 1u32..200, outputs in 1u32..20, seed in any::<u64>()) {
            check(LinearKind::Dense { inputs, outputs }, 512, seed);
        }
    }
}
