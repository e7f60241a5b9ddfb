//! The server's side of one online inference, as an explicit state machine (DESIGN §4, online).
//!
//! The server redeems a ticket (its masks `s_i`, `u_i`, `v_i`), then for each affine map:
//! `ys = trunc(W_i (x_i - r_i) + b_i + s_i)`; if a square follows it sends `d = ys - u_i`, keeps
//! `zs = trunc(ys^2 + 2 v_i)` and waits for the client's `zc - r_(i+1)`, from which it gets
//! `x_(i+1) - r_(i+1) = (zc - r_(i+1)) + zs`; after the last map it sends `ys_L`.
//!
//! The machine is transport-agnostic (the daemon and the tests drive it) and allocation-bounded
//! by the public architecture: vectors are sized from it, chunks must arrive in order and inside
//! the expected length, and any violation moves the machine to `Failed` with a typed error: a
//! failed inference never continues, and its ticket is already gone (single use).

use std::sync::Arc;

use core_nostd::arch::Architecture;
use core_nostd::online::{server_square_share, square_mask};
use core_nostd::truncation::truncate_server_share;
use core_nostd::Fp;

/// Computes `W_i x` (no bias) for map `i`: the server's heavy linear algebra.
pub trait LinearLayers: Send + Sync {
    fn apply(&self, map: usize, x: &[Fp]) -> Vec<Fp>;
}

impl<T: LinearLayers + ?Sized> LinearLayers for Box<T> {
    fn apply(&self, map: usize, x: &[Fp]) -> Vec<Fp> {
        (**self).apply(map, x)
    }
}

/// The server's secret per-ticket material for one inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMaterial {
    /// `s_i`, one vector per map, of the map's output length.
    pub s: Vec<Vec<Fp>>,
    /// `u_i`, one vector per square layer.
    pub u: Vec<Vec<Fp>>,
    /// `v_i`, one vector per square layer.
    pub v: Vec<Vec<Fp>>,
}

impl ServerMaterial {
    /// Check the vector lengths against the architecture.
    pub fn fits(&self, arch: &Architecture) -> bool {
        let l = arch.maps.len();
        self.s.len() == l
            && self.u.len() == l - 1
            && self.v.len() == l - 1
            && arch.maps.iter().enumerate().all(|(i, m)| {
                let n = m.kind.output_len();
                self.s[i].len() == n && (i + 1 == l || (self.u[i].len() == n && self.v[i].len() == n))
            })
    }
}

/// What the server must send after consuming a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerReply {
    /// `d = ys - u` for square layer `layer` (the output of map `layer`).
    SquareMasks { layer: usize, values: Vec<Fp> },
    /// `ys_L`, the server's share of the logits; the inference is complete.
    Output { values: Vec<Fp> },
}

/// Why an online inference was aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnlineError {
    /// A chunk arrived for another phase/layer than the one expected.
    UnexpectedChunk { expected_layer: usize, found_layer: usize },
    /// A chunk's offset is not where the previous one ended.
    OutOfOrder { expected: usize, found: usize },
    /// A chunk runs past the end of the vector.
    TooLong { len: usize, end: usize },
    /// The inference is already complete or failed.
    Finished,
    /// The material does not fit the model (internal error, never from the network).
    MaterialMismatch,
}

impl std::fmt::Display for OnlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnlineError::UnexpectedChunk { expected_layer, found_layer } => {
                write!(f, "expected a chunk for layer {expected_layer}, got layer {found_layer}")
            }
            OnlineError::OutOfOrder { expected, found } => {
                write!(f, "chunk at offset {found}, expected offset {expected}")
            }
            OnlineError::TooLong { len, end } => write!(f, "chunk ends at {end}, vector has {len} elements"),
            OnlineError::Finished => write!(f, "the inference is already finished"),
            OnlineError::MaterialMismatch => write!(f, "ticket material does not fit the model"),
        }
    }
}

impl std::error::Error for OnlineError {}

/// The model-side constants the machine needs: architecture, linear layers, encoded biases.
#[derive(Debug)]
pub struct OnlineModel<L> {
    pub arch: Architecture,
    pub layers: L,
    /// `b_i` as field elements (at `frac_bits + truncate_bits` fraction bits).
    pub biases: Vec<Vec<Fp>>,
}

#[derive(Debug)]
enum State {
    /// Receiving `x - r_0` for map 0 (layer index 0), or `zc - r_(i+1)` for map `layer`.
    Receiving {
        layer: usize,
        masked: Vec<Fp>,
        zs: Option<Vec<Fp>>,
    },
    Done,
    Failed,
}

/// One inference on the server.
#[derive(Debug)]
pub struct OnlineServer<L> {
    model: Arc<OnlineModel<L>>,
    material: ServerMaterial,
    state: State,
}

impl<L: LinearLayers> OnlineServer<L> {
    /// Start an inference with a redeemed ticket's material.
    pub fn new(model: Arc<OnlineModel<L>>, material: ServerMaterial) -> Result<Self, OnlineError> {
        if !material.fits(&model.arch) {
            return Err(OnlineError::MaterialMismatch);
        }
        let masked = Vec::with_capacity(model.arch.input_len());
        Ok(OnlineServer { model, material, state: State::Receiving { layer: 0, masked, zs: None } })
    }

    /// The layer whose input the machine is waiting for (`None` when finished).
    pub fn expected_layer(&self) -> Option<usize> {
        match self.state {
            State::Receiving { layer, .. } => Some(layer),
            _ => None,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Consume one chunk of the client's masked vector for map `layer` (the input for layer 0,
    /// `zc - r_layer` otherwise). Returns the reply to send once the vector is complete.
    pub fn on_chunk(
        &mut self,
        layer: usize,
        offset: usize,
        values: &[Fp],
    ) -> Result<Option<ServerReply>, OnlineError> {
        let result = self.on_chunk_inner(layer, offset, values);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn on_chunk_inner(
        &mut self,
        layer: usize,
        offset: usize,
        values: &[Fp],
    ) -> Result<Option<ServerReply>, OnlineError> {
        let State::Receiving { layer: expected_layer, masked, .. } = &mut self.state else {
            return Err(OnlineError::Finished);
        };
        if layer != *expected_layer {
            return Err(OnlineError::UnexpectedChunk { expected_layer: *expected_layer, found_layer: layer });
        }
        let len = self.model.arch.maps[layer].kind.input_len();
        if offset != masked.len() {
            return Err(OnlineError::OutOfOrder { expected: masked.len(), found: offset });
        }
        let end = offset.saturating_add(values.len());
        if end > len {
            return Err(OnlineError::TooLong { len, end });
        }
        masked.extend_from_slice(values);
        if end < len {
            return Ok(None);
        }
        // The whole vector is here: finish the square (if any) and evaluate map `layer`.
        let State::Receiving { layer, mut masked, zs } = std::mem::replace(&mut self.state, State::Failed)
        else {
            unreachable!("state checked above");
        };
        if let Some(zs) = zs {
            for (m, z) in masked.iter_mut().zip(zs) {
                *m += z;
            }
        }
        Ok(Some(self.evaluate_map(layer, &masked)))
    }

    fn evaluate_map(&mut self, layer: usize, masked: &[Fp]) -> ServerReply {
        let arch = &self.model.arch;
        let spec = arch.maps[layer];
        let mut ys = self.model.layers.apply(layer, masked);
        let bits = u32::from(spec.truncate_bits);
        for ((y, b), s) in ys.iter_mut().zip(&self.model.biases[layer]).zip(&self.material.s[layer]) {
            *y = truncate_server_share(*y + *b + *s, bits);
        }
        if layer + 1 == arch.maps.len() {
            self.state = State::Done;
            return ServerReply::Output { values: ys };
        }
        let f = u32::from(arch.frac_bits);
        let (u, v) = (&self.material.u[layer], &self.material.v[layer]);
        let d: Vec<Fp> = ys.iter().zip(u).map(|(&y, &u)| square_mask(y, u)).collect();
        let zs: Vec<Fp> = ys.iter().zip(v).map(|(&y, &v)| server_square_share(y, v, f)).collect();
        let next_len = arch.maps[layer + 1].kind.input_len();
        self.state =
            State::Receiving { layer: layer + 1, masked: Vec::with_capacity(next_len), zs: Some(zs) };
        ServerReply::SquareMasks { layer, values: d }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merged::linear_reference;
    use crate::model::{AffineWeights, MergedModel};
    use core_nostd::arch::{AffineSpec, LinearKind, Shape};
    use core_nostd::client::{ClientState, OnlineClient};
    use core_nostd::ticket::{SliceBody, TicketHeader};
    use rand::{Rng, SeedableRng};

    struct Direct(MergedModel);
    impl LinearLayers for Direct {
        fn apply(&self, map: usize, x: &[Fp]) -> Vec<Fp> {
            linear_reference(&self.0.arch.maps[map].kind, &self.0.maps[map].weights, x)
        }
    }

    fn small_model(rng: &mut impl Rng) -> MergedModel {
        let conv = LinearKind::Conv2d {
            input: Shape::new(2, 7, 6),
            out_channels: 3,
            kernel_h: 3,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 1,
            pad_h: 1,
            pad_w: 0,
        };
        let n1 = conv.output_len();
        let kinds = [
            conv,
            LinearKind::Dense { inputs: n1 as u32, outputs: 9 },
            LinearKind::Dense { inputs: 9, outputs: 4 },
        ];
        let mut maps = heapless::Vec::new();
        let mut weights = Vec::new();
        for kind in kinds {
            maps.push(AffineSpec { kind, truncate_bits: 6 }).unwrap();
            let nw = crate::model::merged::weight_count(&kind);
            weights.push(AffineWeights {
                weights: (0..nw).map(|_| rng.random_range(-40..=40)).collect(),
                bias: (0..kind.output_len()).map(|_| rng.random_range(-5000..=5000)).collect(),
            });
        }
        let arch = Architecture {
            model_id: "t".try_into().unwrap(),
            input: Shape::new(2, 7, 6),
            maps,
            frac_bits: 8,
        };
        MergedModel { arch, maps: weights }
    }

    #[test]
    fn shared_inference_matches_the_fixed_point_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for chunk in [1usize, 13, 128] {
            let m = small_model(&mut rng);
            let arch = m.arch.clone();
            let (ticket, material) = crate::dealer::deal(&m, &mut rng);
            let biases = m.maps.iter().map(|w| w.bias.iter().map(|&b| Fp::from_i64(b)).collect()).collect();
            let model = Arc::new(OnlineModel { arch: arch.clone(), layers: Direct(m.clone()), biases });
            let mut server = OnlineServer::new(model, material).unwrap();
            let header = TicketHeader::from_bytes(&ticket).unwrap();
            let mut client =
                OnlineClient::new(&arch, header, SliceBody::of_ticket(&ticket).unwrap()).unwrap();

            let x: Vec<Fp> = (0..arch.input_len()).map(|_| Fp::from_i64(rng.random_range(0..=256))).collect();
            let mut buf = vec![Fp::ZERO; chunk];
            let mut reply = None;
            for part in x.chunks(chunk) {
                let offset = client.mask_input(part, &mut buf).unwrap();
                reply = server.on_chunk(0, offset, &buf[..part.len()]).unwrap();
            }
            let mut logits = vec![Fp::ZERO; arch.output_len()];
            loop {
                match reply.take().expect("server must reply once the vector is complete") {
                    ServerReply::SquareMasks { layer, values: d } => {
                        for (k, part) in d.chunks(chunk).enumerate() {
                            client.on_square_masks(layer, k * chunk, part, &mut buf).unwrap();
                            reply = server.on_chunk(layer + 1, k * chunk, &buf[..part.len()]).unwrap();
                        }
                    }
                    ServerReply::Output { values } => {
                        let mut done = false;
                        for (k, part) in values.chunks(chunk).enumerate() {
                            done = client.on_output(k * chunk, part, &mut logits).unwrap();
                        }
                        assert!(done);
                        break;
                    }
                }
            }
            assert!(server.is_done());
            assert_eq!(client.state(), ClientState::Done);
            let trace = crate::model::FixedPointReference::trace_encoded(&m, x.clone()).unwrap();
            let bound = crate::model::FixedPointReference::error_bound(&m, &x).unwrap();
            let expect: Vec<i64> = trace.maps.last().unwrap().iter().map(|v| v.to_i64_centered()).collect();
            for ((got, want), b) in logits.iter().zip(&expect).zip(&bound) {
                let got = got.to_i64_centered();
                assert!((got - want).abs() <= *b, "logit {got} vs reference {want}, bound {b}");
            }
        }
    }

    #[test]
    fn protocol_violations_fail_the_inference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let m = small_model(&mut rng);
        let biases = m.maps.iter().map(|w| w.bias.iter().map(|&b| Fp::from_i64(b)).collect()).collect();
        let material = ServerMaterial {
            s: m.arch.maps.iter().map(|s| vec![Fp::ZERO; s.kind.output_len()]).collect(),
            u: m.arch.maps[..2].iter().map(|s| vec![Fp::ZERO; s.kind.output_len()]).collect(),
            v: m.arch.maps[..2].iter().map(|s| vec![Fp::ZERO; s.kind.output_len()]).collect(),
        };
        let model = Arc::new(OnlineModel { arch: m.arch.clone(), layers: Direct(m.clone()), biases });
        let mut server = OnlineServer::new(model.clone(), material.clone()).unwrap();
        assert_eq!(
            server.on_chunk(1, 0, &[Fp::ZERO]),
            Err(OnlineError::UnexpectedChunk { expected_layer: 0, found_layer: 1 })
        );
        assert_eq!(
            server.on_chunk(0, 0, &[Fp::ZERO]),
            Err(OnlineError::Finished),
            "a failed inference stays failed"
        );
        let mut server = OnlineServer::new(model.clone(), material.clone()).unwrap();
        assert_eq!(
            server.on_chunk(0, 5, &[Fp::ZERO]),
            Err(OnlineError::OutOfOrder { expected: 0, found: 5 })
        );
        let mut server = OnlineServer::new(model.clone(), material.clone()).unwrap();
        let too_long = vec![Fp::ZERO; m.arch.input_len() + 1];
        assert!(matches!(server.on_chunk(0, 0, &too_long), Err(OnlineError::TooLong { .. })));
        let mut short = material;
        short.s[0].pop();
        assert_eq!(OnlineServer::new(model, short).err(), Some(OnlineError::MaterialMismatch));
    }
}
