use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::arch::{AffineSpec, Architecture, LinearKind, Shape};
use crate::field::{Fp, P};

fn arch() -> Architecture {
    let mut maps = heapless::Vec::new();
    let conv = LinearKind::Conv2d {
        input: Shape::new(1, 28, 28),
        out_channels: 5,
        kernel_h: 5,
        kernel_w: 5,
        stride_h: 2,
        stride_w: 2,
        pad_h: 1,
        pad_w: 1,
    };
    maps.push(AffineSpec { kind: conv, truncate_bits: 6 }).unwrap();
    maps.push(AffineSpec { kind: LinearKind::Dense { inputs: 845, outputs: 100 }, truncate_bits: 6 })
        .unwrap();
    maps.push(AffineSpec { kind: LinearKind::Dense { inputs: 100, outputs: 10 }, truncate_bits: 6 }).unwrap();
    Architecture {
        model_id: heapless::String::try_from("cryptonets-sq").unwrap(),
        input: Shape::new(1, 28, 28),
        maps,
        frac_bits: 6,
    }
}

fn values(n: usize, salt: u64) -> Vec<Fp> {
    (0..n as u64).map(|i| Fp::from_u64_reduced(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt)).collect()
}

/// One message of every variant (and the extreme sizes).
fn all_messages<'a>(vals: &'a [Fp], blob: &'a [u8], arch: &Architecture) -> Vec<Message<'a>> {
    let chunk = FieldChunk { layer: 2, offset: 256, values: FieldElems::from_values(vals) };
    vec![
        Message::ClientHello { version: PROTOCOL_VERSION, model_id: "minionn-sq", arch_hash: Some([9; 32]) },
        Message::ClientHello { version: PROTOCOL_VERSION, model_id: "m", arch_hash: None },
        Message::ServerHello { version: PROTOCOL_VERSION, arch: arch.clone() },
        Message::Refused { reason: RefuseReason::UnsupportedVersion { supported: 1 } },
        Message::Refused { reason: RefuseReason::UnknownModel },
        Message::Refused { reason: RefuseReason::ArchitectureMismatch },
        Message::Refused { reason: RefuseReason::Busy },
        Message::TicketRequest { model_id: "mlp-sq" },
        Message::TicketGranted { ticket_id: TicketId([0xab; 16]) },
        Message::HeChunk(BlobChunk {
            round: HeRound::LinearResults,
            blob: 7,
            offset: 2048,
            total_len: 190_000,
            bytes: blob,
        }),
        Message::HeRoundEnd { round: HeRound::ProductResults, blobs: 12 },
        Message::HeRoundEnd { round: HeRound::MaskCiphertexts, blobs: 0 },
        Message::HeRoundEnd { round: HeRound::ActivationCiphertexts, blobs: u32::MAX },
        Message::OnlineBegin { ticket_id: TicketId([1; 16]) },
        Message::MaskedInput(chunk),
        Message::ActivationDelta(chunk),
        Message::MaskedActivation(FieldChunk { layer: u16::MAX, offset: u32::MAX - 128, ..chunk }),
        Message::OutputShare(FieldChunk { layer: 0, offset: 0, values: FieldElems::from_values(&vals[..0]) }),
        Message::Error { code: ErrorCode::TicketReused, detail: "ticket 0101.. was already used" },
        Message::Error { code: ErrorCode::Internal, detail: "" },
    ]
}

fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_SIZE];
    encode_frame(msg, &mut buf).unwrap().to_vec()
}

/// A frame with an arbitrary payload and a correct header.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = PROTOCOL_VERSION.to_le_bytes().to_vec();
    f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn every_message_round_trips_through_frames() {
    let vals = values(MAX_CHUNK_VALUES, 1);
    let blob: Vec<u8> = (0..MAX_CHUNK_BYTES).map(|i| i as u8).collect();
    let arch = arch();
    let msgs = all_messages(&vals, &blob, &arch);
    let mut stream = Vec::new();
    for m in &msgs {
        let frame = encode(m);
        assert!(frame.len() <= MAX_FRAME_SIZE);
        let (back, rest) = decode_frame(&frame).unwrap();
        assert_eq!(&back, m);
        assert!(rest.is_empty());
        stream.extend_from_slice(&frame);
    }
    // The same frames back to back, through the contiguous decoder...
    let mut rest: &[u8] = &stream;
    for m in &msgs {
        let (back, r) = decode_frame(rest).unwrap();
        assert_eq!(&back, m);
        rest = r;
    }
    assert!(rest.is_empty());
    // ...and through the incremental decoder, in pieces of every size from 1 to 37 bytes.
    for piece in 1..=37 {
        let mut decoder = FrameDecoder::new();
        let mut got = 0;
        for part in stream.chunks(piece) {
            let mut input = part;
            while !input.is_empty() {
                if let Some(back) = decoder.next_message(&mut input).unwrap() {
                    assert_eq!(back, msgs[got], "piece size {piece}");
                    got += 1;
                }
            }
        }
        assert_eq!(got, msgs.len());
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn field_elements_are_fixed_8_byte_le() {
    let vals = [Fp::from_u64_reduced(0x0102_0304_0506_0708), Fp::from_i64(-1)];
    let msg =
        Message::MaskedInput(FieldChunk { layer: 1, offset: 3, values: FieldElems::from_values(&vals) });
    let frame = encode(&msg);
    // header(4) tag(1) layer(1) offset(1) byte length 16 (1) then the words.
    assert_eq!(frame.len(), 4 + 4 + 16);
    assert_eq!(&frame[4..8], &[8, 1, 3, 16]);
    assert_eq!(&frame[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&frame[16..24], &(P - 1).to_le_bytes());
    let (back, _) = decode_frame(&frame).unwrap();
    let Message::MaskedInput(c) = back else { panic!("wrong variant {back:?}") };
    let mut dest = [Fp::ZERO; 5];
    c.copy_into(&mut dest).unwrap();
    assert_eq!(&dest[3..], &vals);
    let mut small = [Fp::ZERO; 4];
    assert_eq!(c.copy_into(&mut small), Err(WireError::DestinationTooSmall { end: 5, len: 4 }));
}

#[test]
fn largest_messages_fit_a_frame() {
    // An architecture with MAX_MAPS convolutions and 5-byte varints everywhere.
    let big = LinearKind::Conv2d {
        input: Shape::new(u32::MAX, u32::MAX, u32::MAX),
        out_channels: u32::MAX,
        kernel_h: u32::MAX,
        kernel_w: u32::MAX,
        stride_h: u32::MAX,
        stride_w: u32::MAX,
        pad_h: u32::MAX,
        pad_w: u32::MAX,
    };
    let mut maps = heapless::Vec::new();
    while maps.push(AffineSpec { kind: big, truncate_bits: u8::MAX }).is_ok() {}
    let arch = Architecture {
        model_id: heapless::String::try_from("x".repeat(crate::arch::MAX_MODEL_ID).as_str()).unwrap(),
        input: Shape::new(u32::MAX, u32::MAX, u32::MAX),
        maps,
        frac_bits: u8::MAX,
    };
    let mut buf = [0u8; 2 * MAX_FRAME_SIZE];
    let msg = Message::ServerHello { version: u16::MAX, arch };
    // Not a valid architecture, so serialise directly to measure its size.
    let n = postcard::to_slice(&msg, &mut buf).unwrap().len();
    assert!(n <= MAX_PAYLOAD_SIZE, "worst-case ServerHello is {n} bytes");
    let detail = "d".repeat(MAX_DETAIL_LEN);
    let n = encode(&Message::Error { code: ErrorCode::Internal, detail: &detail }).len();
    assert!(n <= MAX_FRAME_SIZE);
    let blob = [0u8; MAX_CHUNK_BYTES];
    let n = encode(&Message::HeChunk(BlobChunk {
        round: HeRound::ProductResults,
        blob: u32::MAX,
        offset: u32::MAX - MAX_CHUNK_BYTES as u32,
        total_len: u32::MAX,
        bytes: &blob,
    }))
    .len();
    assert!(n <= MAX_FRAME_SIZE);
}

#[test]
fn truncated_frames_are_errors() {
    let vals = values(20, 5);
    let frame = encode(&Message::ActivationDelta(FieldChunk {
        layer: 0,
        offset: 0,
        values: FieldElems::from_values(&vals),
    }));
    for cut in 0..frame.len() {
        match decode_frame(&frame[..cut]) {
            Err(WireError::Truncated { available, .. }) => assert_eq!(available, cut),
            other => panic!("cut at {cut}: {other:?}"),
        }
        // The incremental decoder just waits for more.
        let mut d = FrameDecoder::new();
        let mut input = &frame[..cut];
        assert_eq!(d.feed(&mut input), Ok(None));
        assert_eq!(d.buffered(), cut);
    }
    // A frame whose declared payload is shorter than its message: garbage, not a panic.
    let short = raw_frame(&frame[4..frame.len() - 3]);
    assert!(matches!(decode_frame(&short), Err(WireError::Malformed(_))));
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut header = PROTOCOL_VERSION.to_le_bytes().to_vec();
    header.extend_from_slice(&((MAX_PAYLOAD_SIZE + 1) as u16).to_le_bytes());
    let expected = WireError::Oversized { len: MAX_PAYLOAD_SIZE + 1 };
    assert_eq!(decode_frame(&header).err(), Some(expected.clone()));
    let mut d = FrameDecoder::new();
    let mut stream = header.clone();
    stream.extend_from_slice(&[0u8; 100]);
    let mut input: &[u8] = &stream;
    assert_eq!(d.feed(&mut input), Err(expected.clone()));
    // Only the header was consumed; nothing of the payload was buffered.
    assert_eq!(input.len(), 100);
    assert_eq!(d.buffered(), 0);
    // The decoder stays failed until reset.
    assert_eq!(d.feed(&mut input), Err(expected));
    d.reset();
    let frame = encode(&Message::HeRoundEnd { round: HeRound::LinearResults, blobs: 3 });
    let mut input: &[u8] = &frame;
    assert!(d.next_message(&mut input).unwrap().is_some());
    // Encoding refuses over-long chunks and strings.
    let long = values(MAX_CHUNK_VALUES + 1, 0);
    let mut buf = [0u8; 4 * MAX_FRAME_SIZE];
    let chunk = FieldChunk { layer: 0, offset: 0, values: FieldElems::from_values(&long) };
    assert_eq!(
        encode_frame(&Message::MaskedInput(chunk), &mut buf).err(),
        Some(WireError::BadChunk(ChunkError::TooLong { len: MAX_CHUNK_VALUES + 1 }))
    );
    let detail = "d".repeat(MAX_DETAIL_LEN + 1);
    assert!(matches!(
        encode_frame(&Message::Error { code: ErrorCode::Malformed, detail: &detail }, &mut buf),
        Err(WireError::BadString { .. })
    ));
    let blob = [0u8; MAX_CHUNK_BYTES + 1];
    let msg = Message::HeChunk(BlobChunk {
        round: HeRound::LinearResults,
        blob: 0,
        offset: 0,
        total_len: 2000,
        bytes: &blob,
    });
    assert!(matches!(encode_frame(&msg, &mut buf), Err(WireError::BadChunk(ChunkError::TooLong { .. }))));
    // A small buffer is a typed error too.
    let mut tiny = [0u8; 10];
    let vals = values(10, 0);
    let msg =
        Message::OutputShare(FieldChunk { layer: 0, offset: 0, values: FieldElems::from_values(&vals) });
    assert_eq!(encode_frame(&msg, &mut tiny).err(), Some(WireError::BufferTooSmall { capacity: 10 }));
}

#[test]
fn wrong_version_is_refused() {
    let mut frame = encode(&Message::OnlineBegin { ticket_id: TicketId([0; 16]) });
    frame[0] = frame[0].wrapping_add(1);
    let found = u16::from_le_bytes([frame[0], frame[1]]);
    assert_eq!(decode_frame(&frame).err(), Some(WireError::WrongVersion { found }));
    let mut d = FrameDecoder::new();
    let mut input: &[u8] = &frame;
    assert_eq!(d.feed(&mut input), Err(WireError::WrongVersion { found }));
}

#[test]
fn garbage_is_malformed() {
    for payload in [&[][..], &[0xff], &[0xff; 40], &[200, 1, 2, 3], &[0x80; 12]] {
        assert!(matches!(decode_frame(&raw_frame(payload)), Err(WireError::Malformed(_))), "{payload:?}");
    }
    // Bytes after a complete message.
    let mut payload = encode(&Message::OnlineBegin { ticket_id: TicketId([2; 16]) })[4..].to_vec();
    payload.push(0);
    assert_eq!(decode_frame(&raw_frame(&payload)).err(), Some(WireError::TrailingBytes { extra: 1 }));
    // Invalid UTF-8 in a string.
    let mut payload = encode(&Message::TicketRequest { model_id: "abc" })[4..].to_vec();
    let last = payload.len() - 1;
    payload[last] = 0xff;
    assert!(matches!(decode_frame(&raw_frame(&payload)), Err(WireError::Malformed(_))));
    // Empty model id, invalid architecture.
    let payload = encode(&Message::TicketRequest { model_id: "a" })[4..].to_vec();
    let empty = [payload[0], 0];
    assert_eq!(
        decode_frame(&raw_frame(&empty)).err(),
        Some(WireError::BadString { len: 0, max: MAX_MODEL_ID_LEN })
    );
    let mut bad = arch();
    bad.frac_bits = 0;
    let mut buf = [0u8; MAX_FRAME_SIZE];
    let msg = Message::ServerHello { version: PROTOCOL_VERSION, arch: bad.clone() };
    assert!(matches!(encode_frame(&msg, &mut buf), Err(WireError::BadArchitecture(_))));
    let n = postcard::to_slice(&msg, &mut buf).unwrap().len();
    let frame = raw_frame(&buf[..n]);
    assert!(matches!(decode_frame(&frame), Err(WireError::BadArchitecture(_))));
}

#[test]
fn non_canonical_and_misaligned_elements_are_refused() {
    let vals = values(4, 9);
    let frame = encode(&Message::MaskedActivation(FieldChunk {
        layer: 1,
        offset: 0,
        values: FieldElems::from_values(&vals),
    }));
    // Element 2 starts at header 4 + tag 1 + layer 1 + offset 1 + length 1 + 16.
    let at = 8 + 16;
    for bad in [P, P + 1, u64::MAX] {
        let mut f = frame.clone();
        f[at..at + 8].copy_from_slice(&bad.to_le_bytes());
        assert_eq!(decode_frame(&f).err(), Some(WireError::NonCanonical { index: 2, value: bad }));
    }
    // p - 1 is fine.
    let mut f = frame.clone();
    f[at..at + 8].copy_from_slice(&(P - 1).to_le_bytes());
    assert!(decode_frame(&f).is_ok());
    // A byte length that is not a multiple of 8: drop one byte of the run and fix the lengths.
    let mut payload = frame[4..frame.len() - 1].to_vec();
    payload[3] -= 1;
    assert_eq!(
        decode_frame(&raw_frame(&payload)).err(),
        Some(WireError::BadChunk(ChunkError::Misaligned { len: 31 }))
    );
    // A blob chunk that runs past its declared total.
    let msg = Message::HeChunk(BlobChunk {
        round: HeRound::LinearResults,
        blob: 0,
        offset: 10,
        total_len: 12,
        bytes: &[1, 2, 3],
    });
    let mut buf = [0u8; 64];
    assert_eq!(
        encode_frame(&msg, &mut buf).err(),
        Some(WireError::BadChunk(ChunkError::OutOfBounds { offset: 10, len: 3, total: 12 }))
    );
}

#[test]
fn chunkers_cover_the_vector() {
    let vals = values(1000, 3);
    let mut dest = vec![Fp::ZERO; 1000];
    let mut n = 0;
    for chunk in field_chunks(4, &vals) {
        assert!(chunk.values.len() <= MAX_CHUNK_VALUES);
        let frame = encode(&Message::ActivationDelta(chunk));
        let (Message::ActivationDelta(back), _) = decode_frame(&frame).unwrap() else { panic!() };
        assert_eq!(back.layer, 4);
        back.copy_into(&mut dest).unwrap();
        n += 1;
    }
    assert_eq!(n, 8);
    assert_eq!(dest, vals);
    let blob: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let mut out = vec![0u8; blob.len()];
    for c in blob_chunks(HeRound::MaskCiphertexts, 3, &blob) {
        assert_eq!((c.total_len, c.blob), (5000, 3));
        let frame = encode(&Message::HeChunk(c));
        let (Message::HeChunk(back), _) = decode_frame(&frame).unwrap() else { panic!() };
        back.copy_into(&mut out).unwrap();
    }
    assert_eq!(out, blob);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400), split in 1usize..64) {
        let _ = decode_frame(&bytes);
        let _ = decode_payload(&bytes);
        let _ = decode_frame(&raw_frame(&bytes[..bytes.len().min(MAX_PAYLOAD_SIZE)]));
        let mut d = FrameDecoder::new();
        for part in bytes.chunks(split) {
            let mut input = part;
            while !input.is_empty() {
                match d.next_message(&mut input) {
                    Ok(_) => {}
                    Err(_) => { d.reset(); input = &[]; }
                }
            }
        }
    }

    #[test]
    fn mutated_frames_never_panic(pos in 0usize..200, byte in any::<u8>(), n in 0usize..40) {
        let vals = values(n, 77);
        let frame = encode(&Message::OutputShare(FieldChunk { layer: 3, offset: 5, values: FieldElems::from_values(&vals) }));
        let mut f = frame.clone();
        let i = pos % f.len();
        f[i] = byte;
        if let Ok((Message::OutputShare(c), _)) = decode_frame(&f) {
            // Whatever decodes is canonical.
            for v in c.values.iter() { prop_assert!(v.value() < P); }
        }
    }

    #[test]
    fn field_chunks_round_trip(raw in proptest::collection::vec(0u64..P, 0..=MAX_CHUNK_VALUES), layer in any::<u16>(), offset in 0u32..1_000_000) {
        let vals: Vec<Fp> = raw.iter().map(|&v| Fp::new(v).unwrap()).collect();
        let msg = Message::MaskedActivation(FieldChunk { layer, offset, values: FieldElems::from_values(&vals) });
        let frame = encode(&msg);
        let (back, rest) = decode_frame(&frame).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(back, msg);
    }
}
