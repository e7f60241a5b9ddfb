//! One client connection on the server, as a sans-I/O state machine.
//!
//! The daemon feeds decoded [`Message`]s in and writes the frames this machine appends to an
//! output buffer; it never touches a socket itself, so the whole protocol logic is testable (and
//! fuzzable) without a network.
//!
//! ```text
//! AwaitHello --ClientHello ok--> Ready{model}      (ServerHello{arch})
//!            --anything else---> Closed            (Refused / Error)
//! Ready --TicketRequest--> Preprocessing ... --> Ready   (TicketGranted, HE rounds)
//! Ready --OnlineBegin{ticket}--> Online{machine} --last chunk--> Ready  (OutputShare sent)
//! any protocol violation --> Closed, after one Error{code, detail} frame
//! ```
//!
//! A ticket is redeemed (and so destroyed) the moment `OnlineBegin` names it, before any input
//! arrives: an inference that fails halfway leaves no reusable ticket behind.

use std::collections::HashMap;
use std::sync::Arc;

use core_nostd::arch::Architecture;
use core_nostd::wire::{
    blob_chunks, encode_frame, field_chunks, ErrorCode, FieldChunk, HeRound, Message, RefuseReason, TicketId,
    WireError, MAX_FRAME_SIZE, PROTOCOL_VERSION,
};
use core_nostd::Fp;

use crate::config::Limits;
use crate::he::{HeModel, PrepStep, ServerPreprocessing};
use crate::inference::{LinearLayers, OnlineError, OnlineModel, OnlineServer, ServerMaterial, ServerReply};
use crate::tickets::{TicketError, TicketPayload, TicketStore};

/// The linear layers as the daemon holds them (any engine).
pub type ModelLayers = Box<dyn LinearLayers>;

impl TicketPayload for ServerMaterial {
    fn size_bytes(&self) -> usize {
        let n: usize = self.s.iter().chain(&self.u).chain(&self.v).map(Vec::len).sum();
        n * std::mem::size_of::<Fp>() + 3 * 24 * (self.s.len() + 1)
    }
}

/// A model as the daemon serves it.
pub struct ServedModel {
    pub arch: Architecture,
    pub hash: [u8; 32],
    pub online: Arc<OnlineModel<ModelLayers>>,
    /// The HE half of preprocessing; `Err` (with the reason) if the model cannot be
    /// preprocessed with HE, in which case ticket requests are refused with that reason.
    pub he: Result<Arc<HeModel>, String>,
}

/// `W x` by direct loops over F_p ([`crate::model::merged::linear_reference`]): correct and
/// simple; the daemon's default engine until a faster one is plugged in through [`LinearLayers`].
#[derive(Debug)]
pub struct DirectLayers(pub crate::model::MergedModel);

impl LinearLayers for DirectLayers {
    fn apply(&self, map: usize, x: &[Fp]) -> Vec<Fp> {
        crate::model::merged::linear_reference(&self.0.arch.maps[map].kind, &self.0.maps[map].weights, x)
    }
}

impl ServedModel {
    /// Serve a merged model with the lazy-reduction engine ([`crate::linear::LazyLayers`]), or
    /// the direct loops if its weights exceed that engine's bound.
    pub fn from_merged(m: &crate::model::MergedModel) -> ServedModel {
        let biases = m.maps.iter().map(|w| w.bias.iter().map(|&b| Fp::from_i64(b)).collect()).collect();
        let layers: ModelLayers = match crate::linear::LazyLayers::new(m.clone()) {
            Ok(lazy) => Box::new(lazy),
            Err(e) => {
                tracing::warn!(model = %m.arch.model_id, error = %e, "using the direct linear layers");
                Box::new(DirectLayers(m.clone()))
            }
        };
        let he = HeModel::new(m).map(Arc::new).map_err(|e| {
            tracing::warn!(model = %m.arch.model_id, error = %e, "no HE preprocessing for this model");
            e.to_string()
        });
        ServedModel {
            arch: m.arch.clone(),
            hash: m.arch.hash(),
            online: Arc::new(OnlineModel { arch: m.arch.clone(), layers, biases }),
            he,
        }
    }
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel").field("model_id", &self.arch.model_id).finish_non_exhaustive()
    }
}

/// Everything the sessions of one daemon share.
#[derive(Debug)]
pub struct ServerState {
    pub models: HashMap<String, Arc<ServedModel>>,
    pub tickets: TicketStore<ServerMaterial>,
    pub limits: Limits,
}

impl ServerState {
    pub fn new(models: Vec<ServedModel>, limits: Limits) -> ServerState {
        let models = models.into_iter().map(|m| (m.arch.model_id.as_str().to_owned(), Arc::new(m))).collect();
        ServerState { models, tickets: TicketStore::new(limits.tickets()), limits }
    }
}

/// A protocol violation: the session sends `Error{code, detail}` and closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionError {
    pub code: ErrorCode,
    pub detail: String,
}

impl SessionError {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        SessionError { code, detail: detail.into() }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.detail)
    }
}

impl std::error::Error for SessionError {}

impl From<OnlineError> for SessionError {
    fn from(e: OnlineError) -> Self {
        let code = match e {
            OnlineError::MaterialMismatch => ErrorCode::Internal,
            OnlineError::Finished => ErrorCode::UnexpectedMessage,
            _ => ErrorCode::BadChunk,
        };
        SessionError::new(code, e.to_string())
    }
}

impl From<he_bfv::HeError> for SessionError {
    fn from(e: he_bfv::HeError) -> Self {
        let code = match e {
            he_bfv::HeError::Count { .. } => ErrorCode::BadChunk,
            _ => ErrorCode::BadCiphertext,
        };
        SessionError::new(code, e.to_string())
    }
}

impl From<TicketError> for SessionError {
    fn from(e: TicketError) -> Self {
        let code = match e {
            TicketError::AlreadyUsed => ErrorCode::TicketReused,
            TicketError::WrongModel => ErrorCode::ArchitectureMismatch,
            TicketError::StoreFull => ErrorCode::ResourceExhausted,
            _ => ErrorCode::UnknownTicket,
        };
        SessionError::new(code, e.to_string())
    }
}

/// What the daemon does after a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Flush the output, then close the connection.
    Close,
}

enum Phase {
    AwaitHello,
    Ready { model: Arc<ServedModel> },
    Online { model: Arc<ServedModel>, machine: OnlineServer<ModelLayers> },
    Preprocessing { model: Arc<ServedModel>, ticket_id: TicketId, prep: ServerPreprocessing },
    Closed,
}

/// The server side of one connection.
pub struct ServerSession {
    state: Arc<ServerState>,
    phase: Phase,
    inferences: u64,
    /// Tickets preprocessed on this connection (bounded by `Limits::max_tickets_per_session`).
    tickets_made: u32,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::AwaitHello => "AwaitHello",
            Phase::Ready { .. } => "Ready",
            Phase::Online { .. } => "Online",
            Phase::Preprocessing { .. } => "Preprocessing",
            Phase::Closed => "Closed",
        };
        f.debug_struct("ServerSession").field("phase", &phase).field("inferences", &self.inferences).finish()
    }
}

/// Append one encoded frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, msg: &Message<'_>) -> Result<(), WireError> {
    let mut buf = [0u8; MAX_FRAME_SIZE];
    let frame = encode_frame(msg, &mut buf)?;
    out.extend_from_slice(frame);
    Ok(())
}

/// Which server-to-client vector a run of chunks carries.
#[derive(Clone, Copy)]
enum Outgoing {
    ActivationDelta,
    OutputShare,
}

fn push_blobs(out: &mut Vec<u8>, round: HeRound, blobs: &[Vec<u8>]) -> Result<(), SessionError> {
    let internal = |e: WireError| SessionError::new(ErrorCode::Internal, e.to_string());
    for (i, blob) in blobs.iter().enumerate() {
        for chunk in blob_chunks(round, i as u32, blob) {
            push_frame(out, &Message::HeChunk(chunk)).map_err(internal)?;
        }
    }
    push_frame(out, &Message::HeRoundEnd { round, blobs: blobs.len() as u32 }).map_err(internal)
}

fn push_vector(out: &mut Vec<u8>, layer: usize, values: &[Fp], kind: Outgoing) {
    for chunk in field_chunks(layer as u16, values) {
        let msg = match kind {
            Outgoing::ActivationDelta => Message::ActivationDelta(chunk),
            Outgoing::OutputShare => Message::OutputShare(chunk),
        };
        // Chunks from `field_chunks` always fit a frame.
        if let Err(e) = push_frame(out, &msg) {
            unreachable!("a field chunk always encodes: {e}");
        }
    }
}

impl ServerSession {
    pub fn new(state: Arc<ServerState>) -> ServerSession {
        ServerSession { state, phase: Phase::AwaitHello, inferences: 0, tickets_made: 0 }
    }

    /// Completed inferences on this connection.
    pub fn inferences(&self) -> u64 {
        self.inferences
    }

    /// Handle one message, appending the frames to send to `out`.
    pub fn handle(&mut self, msg: &Message<'_>, out: &mut Vec<u8>) -> Flow {
        match self.dispatch(msg, out) {
            Ok(flow) => flow,
            Err(e) => {
                self.fail(&e, out);
                Flow::Close
            }
        }
    }

    /// Report a transport-level failure (undecodable frame, timeout) to the peer and close.
    pub fn fail(&mut self, e: &SessionError, out: &mut Vec<u8>) {
        tracing::debug!(code = ?e.code, detail = %e.detail, "closing session with an error");
        self.phase = Phase::Closed;
        let mut detail = e.detail.as_str();
        while detail.len() > core_nostd::wire::MAX_DETAIL_LEN {
            // Cut at a char boundary at or below the limit.
            let mut end = core_nostd::wire::MAX_DETAIL_LEN;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail = &detail[..end];
        }
        let _ = push_frame(out, &Message::Error { code: e.code, detail });
    }

    fn dispatch(&mut self, msg: &Message<'_>, out: &mut Vec<u8>) -> Result<Flow, SessionError> {
        let unexpected =
            || SessionError::new(ErrorCode::UnexpectedMessage, "message not expected in this state");
        match (&mut self.phase, msg) {
            (Phase::AwaitHello, Message::ClientHello { version, model_id, arch_hash }) => {
                let mut refuse = |reason| {
                    let _ = push_frame(out, &Message::Refused { reason });
                    Ok(Flow::Close)
                };
                if *version != PROTOCOL_VERSION {
                    self.phase = Phase::Closed;
                    return refuse(RefuseReason::UnsupportedVersion { supported: PROTOCOL_VERSION });
                }
                let Some(model) = self.state.models.get(*model_id).cloned() else {
                    self.phase = Phase::Closed;
                    return refuse(RefuseReason::UnknownModel);
                };
                if arch_hash.is_some_and(|h| h != model.hash) {
                    self.phase = Phase::Closed;
                    return refuse(RefuseReason::ArchitectureMismatch);
                }
                push_frame(
                    out,
                    &Message::ServerHello { version: PROTOCOL_VERSION, arch: model.arch.clone() },
                )
                .map_err(|e| SessionError::new(ErrorCode::Internal, e.to_string()))?;
                self.phase = Phase::Ready { model };
                Ok(Flow::Continue)
            }
            (Phase::Ready { model }, Message::OnlineBegin { ticket_id }) => {
                let material = self.state.tickets.redeem(&ticket_id.0, &model.hash)?;
                let machine = OnlineServer::new(model.online.clone(), material)?;
                let model = model.clone();
                self.phase = Phase::Online { model, machine };
                Ok(Flow::Continue)
            }
            (Phase::Ready { model }, Message::TicketRequest { model_id }) => {
                if *model_id != model.arch.model_id.as_str() {
                    return Err(SessionError::new(
                        ErrorCode::UnknownModel,
                        "ticket requested for another model than the handshake's",
                    ));
                }
                if self.tickets_made >= self.state.limits.max_tickets_per_session {
                    return Err(SessionError::new(
                        ErrorCode::ResourceExhausted,
                        "ticket limit of this connection reached",
                    ));
                }
                self.tickets_made += 1;
                let he = model.he.clone().map_err(|reason| {
                    SessionError::new(ErrorCode::Internal, format!("no HE preprocessing: {reason}"))
                })?;
                let mut id = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
                let ticket_id = TicketId(id);
                push_frame(out, &Message::TicketGranted { ticket_id })
                    .map_err(|e| SessionError::new(ErrorCode::Internal, e.to_string()))?;
                let model = model.clone();
                self.phase = Phase::Preprocessing { model, ticket_id, prep: ServerPreprocessing::new(he) };
                Ok(Flow::Continue)
            }
            (Phase::Preprocessing { prep, .. }, Message::HeChunk(chunk)) => {
                prep.on_chunk(chunk)?;
                Ok(Flow::Continue)
            }
            (Phase::Preprocessing { prep, .. }, Message::HeRoundEnd { round, blobs }) => {
                let step = prep.on_round_end(*round, *blobs)?;
                let (round, replies, material) = match step {
                    PrepStep::Reply { round, blobs } => (round, blobs, None),
                    PrepStep::Finished { round, blobs, material } => (round, blobs, Some(material)),
                };
                if let Some(material) = material {
                    let Phase::Preprocessing { model, ticket_id, .. } =
                        std::mem::replace(&mut self.phase, Phase::Closed)
                    else {
                        unreachable!("phase checked above");
                    };
                    // Stored before the last reply leaves: once the client has its half, the
                    // server's half exists.
                    self.state.tickets.insert(ticket_id.0, model.hash, material)?;
                    self.phase = Phase::Ready { model };
                }
                push_blobs(out, round, &replies)?;
                Ok(Flow::Continue)
            }
            (Phase::Online { .. }, Message::MaskedInput(chunk) | Message::MaskedActivation(chunk)) => {
                let is_input = matches!(msg, Message::MaskedInput(_));
                if is_input != (chunk.layer == 0) {
                    return Err(SessionError::new(
                        ErrorCode::BadChunk,
                        "layer does not match the message kind",
                    ));
                }
                self.online_chunk(chunk, out)
            }
            (Phase::Closed, _) => Err(unexpected()),
            _ => Err(unexpected()),
        }
    }

    fn online_chunk(&mut self, chunk: &FieldChunk<'_>, out: &mut Vec<u8>) -> Result<Flow, SessionError> {
        let Phase::Online { machine, .. } = &mut self.phase else {
            return Err(SessionError::new(ErrorCode::UnexpectedMessage, "no inference in progress"));
        };
        let values: Vec<Fp> = chunk.values.iter().collect();
        let reply = machine.on_chunk(chunk.layer as usize, chunk.offset as usize, &values)?;
        match reply {
            None => {}
            Some(ServerReply::SquareMasks { layer, values }) => {
                push_vector(out, layer, &values, Outgoing::ActivationDelta);
            }
            Some(ServerReply::Output { values }) => {
                let Phase::Online { model, .. } = std::mem::replace(&mut self.phase, Phase::Closed) else {
                    unreachable!("phase checked above");
                };
                push_vector(out, model.arch.maps.len() - 1, &values, Outgoing::OutputShare);
                self.inferences += 1;
                self.phase = Phase::Ready { model };
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merged::weight_count;
    use crate::model::{AffineWeights, MergedModel};
    use core_nostd::arch::{AffineSpec, LinearKind, Shape};
    use core_nostd::wire::{blob_chunks, BlobChunk, FieldElems, FrameDecoder};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn state() -> Arc<ServerState> {
        static STATE: OnceLock<Arc<ServerState>> = OnceLock::new();
        STATE
            .get_or_init(|| {
                let input = Shape::new(1, 4, 4);
                let kinds = [
                    LinearKind::Conv2d {
                        input,
                        out_channels: 2,
                        kernel_h: 3,
                        kernel_w: 3,
                        stride_h: 1,
                        stride_w: 1,
                        pad_h: 1,
                        pad_w: 1,
                    },
                    LinearKind::Dense { inputs: 32, outputs: 3 },
                ];
                let mut maps = heapless::Vec::new();
                let mut weights = Vec::new();
                for kind in kinds {
                    let _ = maps.push(AffineSpec { kind, truncate_bits: 3 });
                    weights.push(AffineWeights {
                        weights: (0..weight_count(&kind)).map(|k| (k as i64 % 7) - 3).collect(),
                        bias: vec![1; kind.output_len()],
                    });
                }
                let arch = Architecture {
                    model_id: heapless::String::try_from("p").expect("short"),
                    input,
                    maps,
                    frac_bits: 6,
                };
                let m = MergedModel { arch, maps: weights };
                Arc::new(ServerState::new(vec![ServedModel::from_merged(&m)], Limits::default()))
            })
            .clone()
    }

    /// One protocol message chosen from a small alphabet, so that random sequences reach every
    /// phase (handshake, preprocessing, online) and not only the first check.
    fn message<'a>(kind: u8, a: u32, b: u32, bytes: &'a [u8], values: &'a [Fp]) -> Message<'a> {
        let chunk =
            FieldChunk { layer: (a % 3) as u16, offset: b % 40, values: FieldElems::from_values(values) };
        match kind % 9 {
            0 => Message::ClientHello { version: PROTOCOL_VERSION, model_id: "p", arch_hash: None },
            1 => Message::TicketRequest { model_id: "p" },
            2 => Message::HeChunk(BlobChunk {
                round: HeRound::MaskCiphertexts,
                blob: a % 4,
                offset: b % 4096,
                total_len: (b % 300_000).max(1),
                bytes,
            }),
            3 => Message::HeRoundEnd { round: HeRound::MaskCiphertexts, blobs: a % 5 },
            4 => Message::HeRoundEnd { round: HeRound::ActivationCiphertexts, blobs: a % 5 },
            5 => Message::OnlineBegin { ticket_id: TicketId([(a % 3) as u8; 16]) },
            6 => Message::MaskedInput(chunk),
            7 => Message::MaskedActivation(chunk),
            _ => Message::Error { code: ErrorCode::Internal, detail: "x" },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random message sequences: the session answers or fails with a typed error frame,
        /// never panics, and closes after an error.
        #[test]
        fn arbitrary_message_sequences_never_panic(
            steps in proptest::collection::vec(
                (any::<u8>(), any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64),
                 proptest::collection::vec(0u64..core_nostd::field::P, 0..8)),
                0..16,
            ),
        ) {
            let mut session = ServerSession::new(state());
            let mut out = Vec::new();
            for (kind, a, b, bytes, values) in steps {
                let values: Vec<Fp> = values.into_iter().map(Fp::from_u64_reduced).collect();
                let msg = message(kind, a, b, &bytes, &values);
                if session.handle(&msg, &mut out) == Flow::Close {
                    break;
                }
            }
        }

        /// Random bytes framed as the daemon frames them.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut session = ServerSession::new(state());
            let mut decoder = FrameDecoder::new();
            let mut out = Vec::new();
            let mut input = bytes.as_slice();
            while let Ok(Some(msg)) = decoder.next_message(&mut input) {
                if session.handle(&msg, &mut out) == Flow::Close {
                    break;
                }
            }
        }
    }

    #[test]
    fn a_hello_then_a_blob_of_garbage_is_a_typed_error() {
        let mut session = ServerSession::new(state());
        let mut out = Vec::new();
        let hello = Message::ClientHello { version: PROTOCOL_VERSION, model_id: "p", arch_hash: None };
        assert_eq!(session.handle(&hello, &mut out), Flow::Continue);
        assert_eq!(session.handle(&Message::TicketRequest { model_id: "p" }, &mut out), Flow::Continue);
        let garbage = [3u8; 2000];
        for c in blob_chunks(HeRound::MaskCiphertexts, 0, &garbage) {
            assert_eq!(session.handle(&Message::HeChunk(c), &mut out), Flow::Continue);
        }
        out.clear();
        let end = Message::HeRoundEnd { round: HeRound::MaskCiphertexts, blobs: 1 };
        assert_eq!(session.handle(&end, &mut out), Flow::Close);
        let mut input = out.as_slice();
        let mut decoder = FrameDecoder::new();
        let msg = decoder.next_message(&mut input).ok().flatten();
        assert!(matches!(msg, Some(Message::Error { .. })), "{msg:?}");
    }
}
