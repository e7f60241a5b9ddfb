//! The public architecture of a merged model: what both parties know about the network.
//!
//! After the merging stage (cloud-server) a model is `A_L ∘ sq ∘ ... ∘ sq ∘ A_1` with affine maps
//! `A_i(x) = W_i x + b_i` and a square between every two consecutive maps (DESIGN §4). Shapes are
//! public (the trust model of DESIGN §2); weights, biases and activation coefficients are not and
//! never appear here. The client needs this descriptor to size its buffers, to derive masks, to
//! pack its HE ciphertexts and to run the online state machine; the handshake compares
//! [`Architecture::hash`] so the two parties cannot silently disagree on the network.
//!
//! Tensors are laid out channel-major, `x[c][i][j]` at index `c * H * W + i * W + j`, everywhere
//! (the client's masks, the server's GEMM and the HE packing all use this order).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most affine maps a merged model may have (MiniONN's CIFAR net has 8).
pub const MAX_MAPS: usize = 16;
/// Longest model identifier.
pub const MAX_MODEL_ID: usize = 32;

/// A tensor shape `channels x height x width`; a plain vector of length n is `n x 1 x 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
}

impl Shape {
    pub const fn new(channels: u32, height: u32, width: u32) -> Shape {
        Shape { channels, height, width }
    }

    /// A flat vector of `len` elements.
    pub const fn flat(len: u32) -> Shape {
        Shape { channels: len, height: 1, width: 1 }
    }

    /// Number of elements (saturating, so hostile descriptors cannot overflow).
    pub const fn len(&self) -> usize {
        (self.channels as usize).saturating_mul(self.height as usize).saturating_mul(self.width as usize)
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The linear part of one affine map, with its public shape parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinearKind {
    /// 2-D convolution (cross-correlation, as ONNX/PyTorch define it) of `input` with
    /// `out_channels` kernels of `in_channels x kernel_h x kernel_w`, zero padding
    /// `pad_h`/`pad_w` on both sides, strides `stride_h`/`stride_w`.
    Conv2d {
        input: Shape,
        out_channels: u32,
        kernel_h: u32,
        kernel_w: u32,
        stride_h: u32,
        stride_w: u32,
        pad_h: u32,
        pad_w: u32,
    },
    /// A dense matrix `outputs x inputs` applied to the flattened input.
    Dense { inputs: u32, outputs: u32 },
}

/// One affine map of the merged model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AffineSpec {
    pub kind: LinearKind,
    /// Bits both parties drop (local truncation) from the map's output shares: the fraction
    /// bits of the weights, so the output returns to `frac_bits` fraction bits.
    pub truncate_bits: u8,
}

/// Why a descriptor is not a usable architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchError {
    /// No affine map at all.
    Empty,
    /// A dimension is zero or a stride is zero.
    ZeroDimension { map: usize },
    /// The kernel does not fit in the padded input.
    KernelTooLarge { map: usize },
    /// The input of map `map` does not match the output of the previous map (or the model input).
    ShapeMismatch { map: usize, expected: usize, found: usize },
    /// A tensor is larger than this implementation supports.
    TooLarge { map: usize },
    /// Fixed-point parameters out of range.
    BadFixedPoint,
}

impl core::fmt::Display for ArchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ArchError::Empty => write!(f, "the architecture has no affine map"),
            ArchError::ZeroDimension { map } => write!(f, "map {map}: zero dimension or stride"),
            ArchError::KernelTooLarge { map } => {
                write!(f, "map {map}: kernel larger than padded input")
            }
            ArchError::ShapeMismatch { map, expected, found } => {
                write!(f, "map {map}: input has {found} elements, previous output has {expected}")
            }
            ArchError::TooLarge { map } => write!(f, "map {map}: tensor too large"),
            ArchError::BadFixedPoint => write!(f, "fixed-point parameters out of range"),
        }
    }
}

/// Largest tensor (elements) a map may consume or produce: 2^24 keeps every index in `u32`.
pub const MAX_TENSOR: usize = 1 << 24;

impl LinearKind {
    /// Number of input elements.
    pub const fn input_len(&self) -> usize {
        match self {
            LinearKind::Conv2d { input, .. } => input.len(),
            LinearKind::Dense { inputs, .. } => *inputs as usize,
        }
    }

    /// Output shape (a dense map outputs a flat vector). Callers validate first; on an invalid
    /// conv this returns a zero-sized shape instead of panicking.
    pub const fn output_shape(&self) -> Shape {
        match *self {
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
                let ph = input.height as u64 + 2 * pad_h as u64;
                let pw = input.width as u64 + 2 * pad_w as u64;
                if stride_h == 0 || stride_w == 0 || (kernel_h as u64) > ph || (kernel_w as u64) > pw {
                    return Shape::new(out_channels, 0, 0);
                }
                let oh = (ph - kernel_h as u64) / stride_h as u64 + 1;
                let ow = (pw - kernel_w as u64) / stride_w as u64 + 1;
                Shape::new(out_channels, oh as u32, ow as u32)
            }
            LinearKind::Dense { outputs, .. } => Shape::flat(outputs),
        }
    }

    /// Number of output elements.
    pub const fn output_len(&self) -> usize {
        self.output_shape().len()
    }

    /// Multiply-accumulates of one plaintext evaluation (weights touched once per output).
    pub const fn macs(&self) -> u64 {
        match *self {
            LinearKind::Conv2d { input, kernel_h, kernel_w, .. } => {
                self.output_len() as u64 * input.channels as u64 * kernel_h as u64 * kernel_w as u64
            }
            LinearKind::Dense { inputs, outputs } => inputs as u64 * outputs as u64,
        }
    }
}

/// The public descriptor of a merged model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    /// Short name, e.g. `minionn-sq`.
    pub model_id: heapless::String<MAX_MODEL_ID>,
    /// Shape of the input tensor.
    pub input: Shape,
    /// The affine maps in order; a square sits between each two consecutive maps.
    pub maps: heapless::Vec<AffineSpec, MAX_MAPS>,
    /// Fraction bits of every activation (input, square outputs, map outputs after truncation).
    pub frac_bits: u8,
}

impl Architecture {
    /// Check shapes chain and sizes are in range. Every descriptor from outside (file, network)
    /// goes through this before use.
    pub fn validate(&self) -> Result<(), ArchError> {
        if self.maps.is_empty() {
            return Err(ArchError::Empty);
        }
        if self.frac_bits == 0 || self.frac_bits > 24 {
            return Err(ArchError::BadFixedPoint);
        }
        let mut previous = self.input.len();
        for (i, map) in self.maps.iter().enumerate() {
            if map.truncate_bits > 30 {
                return Err(ArchError::BadFixedPoint);
            }
            if let LinearKind::Conv2d {
                input,
                out_channels,
                kernel_h,
                kernel_w,
                stride_h,
                stride_w,
                pad_h,
                pad_w,
            } = map.kind
            {
                if input.is_empty()
                    || out_channels == 0
                    || kernel_h == 0
                    || kernel_w == 0
                    || stride_h == 0
                    || stride_w == 0
                {
                    return Err(ArchError::ZeroDimension { map: i });
                }
                if kernel_h as u64 > input.height as u64 + 2 * pad_h as u64
                    || kernel_w as u64 > input.width as u64 + 2 * pad_w as u64
                {
                    return Err(ArchError::KernelTooLarge { map: i });
                }
            }
            if let LinearKind::Dense { inputs, outputs } = map.kind {
                if inputs == 0 || outputs == 0 {
                    return Err(ArchError::ZeroDimension { map: i });
                }
            }
            let found = map.kind.input_len();
            if found != previous {
                return Err(ArchError::ShapeMismatch { map: i, expected: previous, found });
            }
            let out = map.kind.output_len();
            if found > MAX_TENSOR || out > MAX_TENSOR || out == 0 {
                return Err(ArchError::TooLarge { map: i });
            }
            previous = out;
        }
        Ok(())
    }

    /// Input length (elements).
    pub fn input_len(&self) -> usize {
        self.input.len()
    }

    /// Output length (logits).
    pub fn output_len(&self) -> usize {
        self.maps.last().map_or(0, |m| m.kind.output_len())
    }

    /// Number of square layers (`maps - 1`).
    pub fn square_layers(&self) -> usize {
        self.maps.len().saturating_sub(1)
    }

    /// Total number of squared elements (activations) over all square layers.
    pub fn activations(&self) -> usize {
        let n = self.maps.len();
        self.maps.iter().take(n.saturating_sub(1)).map(|m| m.kind.output_len()).sum()
    }

    /// Number of locally truncated elements per inference: every map output (by
    /// `truncate_bits`) and every square output (by `frac_bits`). This is the `count` that
    /// [`crate::truncation::inference_failure_bound`] needs (one pair per map and per square).
    pub fn truncations(&self) -> usize {
        self.maps.iter().map(|m| m.kind.output_len()).sum::<usize>() + self.activations()
    }

    /// A 32-byte identity of the public architecture: SHA-256 over a domain tag and the postcard
    /// encoding of the descriptor. Equal hashes mean the parties agree on every public parameter.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"pi-cnn/architecture/v1");
        let mut buf = [0u8; 64];
        hasher.update(self.model_id.as_bytes());
        hasher.update(self.input.channels.to_le_bytes());
        hasher.update(self.input.height.to_le_bytes());
        hasher.update(self.input.width.to_le_bytes());
        hasher.update([self.frac_bits]);
        for map in &self.maps {
            // An AffineSpec encodes in well under 64 bytes.
            if let Ok(bytes) = postcard::to_slice(map, &mut buf) {
                hasher.update((bytes.len() as u32).to_le_bytes());
                hasher.update(&*bytes);
            }
        }
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minionn_like() -> Architecture {
        let mut maps = heapless::Vec::new();
        let conv = LinearKind::Conv2d {
            input: Shape::new(1, 28, 28),
            out_channels: 16,
            kernel_h: 5,
            kernel_w: 5,
            stride_h: 1,
            stride_w: 1,
            pad_h: 0,
            pad_w: 0,
        };
        maps.push(AffineSpec { kind: conv, truncate_bits: 8 }).unwrap();
        maps.push(AffineSpec {
            kind: LinearKind::Dense { inputs: 16 * 24 * 24, outputs: 10 },
            truncate_bits: 8,
        })
        .unwrap();
        Architecture {
            model_id: heapless::String::try_from("test").unwrap(),
            input: Shape::new(1, 28, 28),
            maps,
            frac_bits: 8,
        }
    }

    #[test]
    fn shapes_chain_and_hash_is_stable() {
        let a = minionn_like();
        a.validate().unwrap();
        assert_eq!(a.maps[0].kind.output_shape(), Shape::new(16, 24, 24));
        assert_eq!(a.activations(), 16 * 24 * 24);
        assert_eq!(a.output_len(), 10);
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.frac_bits = 9;
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn minionn_sq_truncation_count() {
        // minionn-sq after merging: conv 5x5 x16; avgpool+conv 5x5 x16 = conv 10x10 stride 2;
        // avgpool+FC 256-100 = dense 1024-100; FC 100-10.
        let conv = |input, out_channels, k, s| LinearKind::Conv2d {
            input,
            out_channels,
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            pad_h: 0,
            pad_w: 0,
        };
        let mut maps = heapless::Vec::new();
        for kind in [
            conv(Shape::new(1, 28, 28), 16, 5, 1),
            conv(Shape::new(16, 24, 24), 16, 10, 2),
            LinearKind::Dense { inputs: 1024, outputs: 100 },
            LinearKind::Dense { inputs: 100, outputs: 10 },
        ] {
            maps.push(AffineSpec { kind, truncate_bits: 6 }).unwrap();
        }
        let a = Architecture {
            model_id: heapless::String::try_from("minionn-sq").unwrap(),
            input: Shape::new(1, 28, 28),
            maps,
            frac_bits: 6,
        };
        a.validate().unwrap();
        assert_eq!(a.activations(), 9216 + 1024 + 100);
        assert_eq!(a.truncations(), 20_690);
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let mut a = minionn_like();
        a.maps[1].kind = LinearKind::Dense { inputs: 100, outputs: 10 };
        assert!(matches!(a.validate(), Err(ArchError::ShapeMismatch { map: 1, .. })));
    }
}
