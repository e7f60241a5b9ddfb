//! Hostile clients against the real daemon on loopback: every attack gets a typed error (or a
//! closed connection), never a panic or a hang, and a well-behaved client is served correctly at
//! the same time; afterwards the ticket store holds nothing a hostile client left behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cloud_server::config::Limits;
use cloud_server::model::FixedPointReference;
use core_nostd::wire::{
    blob_chunks, encode_frame, ErrorCode, FieldChunk, FieldElems, FrameDecoder, HeRound, Message, TicketId,
    MAX_FRAME_SIZE, PROTOCOL_VERSION,
};
use core_nostd::Fp;
use edge_client::online::infer;
use edge_client::preprocess::{preprocess, ClientPreprocessing, PreprocessError};
use edge_client::tickets::Ticket;
use edge_client::transport::{Connection, TransportError};
use integration_tests::{random_model, served, TestServer};
use rand::{Rng, SeedableRng};

const MODEL: &str = "hostile-target";

fn frame(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_SIZE];
    encode_frame(msg, &mut buf).expect("encodable").to_vec()
}

fn hello() -> Vec<u8> {
    frame(&Message::ClientHello { version: PROTOCOL_VERSION, model_id: MODEL, arch_hash: None })
}

/// Sends `bytes`, then reads until the server closes; returns the error code it sent, if any.
fn attack(addr: SocketAddr, bytes: &[u8]) -> Option<ErrorCode> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    last_error(&mut s)
}

/// Reads frames until EOF; the code of the last `Error` frame.
fn last_error(s: &mut TcpStream) -> Option<ErrorCode> {
    let mut decoder = Box::new(FrameDecoder::new());
    let mut buf = vec![0u8; 1 << 16];
    let mut code = None;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return code,
            Ok(n) => n,
        };
        let mut input = &buf[..n];
        while !input.is_empty() {
            match decoder.next_message(&mut input) {
                Ok(Some(Message::Error { code: c, .. })) => code = Some(c),
                Ok(Some(_)) | Ok(None) => {}
                Err(_) => return code,
            }
        }
    }
}

/// One hostile client: returns the error code the server answered with, if any.
type Attack = Box<dyn FnOnce() -> Option<ErrorCode> + Send>;

#[test]
fn hostile_clients_get_typed_errors_while_a_good_client_is_served() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let model = random_model(MODEL, &mut rng);
    let limits = Limits {
        idle_timeout_secs: 2,
        session_timeout_secs: 6,
        max_tickets_per_session: 3,
        ..Limits::default()
    };
    let server = TestServer::start(vec![served(&model)], limits);
    let addr = server.addr;
    let arch = model.arch.clone();
    let mask_blobs = he_bfv::Layout::of(&arch, 8192).unwrap().mask_blobs();

    let attacks: Vec<(&str, Attack)> = vec![
        ("garbage bytes", Box::new(move || attack(addr, &[0x5a; 300]))),
        (
            "oversized length prefix",
            Box::new(move || {
                let mut f = PROTOCOL_VERSION.to_le_bytes().to_vec();
                f.extend_from_slice(&u16::MAX.to_le_bytes());
                attack(addr, &f)
            }),
        ),
        (
            "foreign protocol version",
            Box::new(move || {
                let mut f = hello();
                f[0] ^= 0x40;
                attack(addr, &f)
            }),
        ),
        (
            "truncated frame, then disconnect",
            Box::new(move || {
                let f = hello();
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&f[..f.len() / 2]).unwrap();
                drop(s);
                None
            }),
        ),
        (
            "truncated frame, then silence (idle timeout)",
            Box::new(move || {
                let f = hello();
                attack(addr, &f[..f.len() / 2])
            }),
        ),
        (
            "online before any handshake",
            Box::new(move || attack(addr, &frame(&Message::OnlineBegin { ticket_id: TicketId([1; 16]) }))),
        ),
        (
            "unknown ticket",
            Box::new(move || {
                let mut b = hello();
                b.extend(frame(&Message::OnlineBegin { ticket_id: TicketId([9; 16]) }));
                attack(addr, &b)
            }),
        ),
        (
            "HE chunk before a ticket request",
            Box::new(move || {
                let mut b = hello();
                let blob = [0u8; 100];
                b.extend(frame(&Message::HeChunk(
                    blob_chunks(HeRound::MaskCiphertexts, 0, &blob).next().unwrap(),
                )));
                attack(addr, &b)
            }),
        ),
        (
            "ciphertexts of the wrong size",
            Box::new(move || {
                let mut b = hello();
                b.extend(frame(&Message::TicketRequest { model_id: MODEL }));
                let blob = vec![7u8; 5000];
                for i in 0..mask_blobs {
                    for c in blob_chunks(HeRound::MaskCiphertexts, i as u32, &blob) {
                        b.extend(frame(&Message::HeChunk(c)));
                    }
                }
                b.extend(frame(&Message::HeRoundEnd {
                    round: HeRound::MaskCiphertexts,
                    blobs: mask_blobs as u32,
                }));
                attack(addr, &b)
            }),
        ),
        (
            "a blob longer than any ciphertext",
            Box::new(move || {
                let mut b = hello();
                b.extend(frame(&Message::TicketRequest { model_id: MODEL }));
                let c = core_nostd::wire::BlobChunk {
                    round: HeRound::MaskCiphertexts,
                    blob: 0,
                    offset: 0,
                    total_len: 1 << 30,
                    bytes: &[0; 16],
                };
                b.extend(frame(&Message::HeChunk(c)));
                attack(addr, &b)
            }),
        ),
        (
            "too many tickets on one connection",
            Box::new(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(5);
                let mut conn = Connection::connect(addr, Duration::from_secs(20)).unwrap();
                let arch = conn.hello(MODEL, None).unwrap();
                for _ in 0..3 {
                    preprocess(&mut conn, &arch, &mut rng).unwrap();
                }
                match preprocess(&mut conn, &arch, &mut rng) {
                    Err(PreprocessError::Transport(TransportError::Server { code, .. })) => Some(code),
                    _ => None,
                }
            }),
        ),
        (
            "one byte per second",
            Box::new(move || {
                let f = hello();
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let start = Instant::now();
                for byte in f.iter().cycle().take(20) {
                    if s.write_all(&[*byte]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1000));
                    if start.elapsed() > Duration::from_secs(12) {
                        break;
                    }
                }
                last_error(&mut s)
            }),
        ),
    ];

    let expected = [
        Some(ErrorCode::Malformed),
        Some(ErrorCode::Malformed),
        Some(ErrorCode::Malformed),
        None,
        Some(ErrorCode::Timeout),
        Some(ErrorCode::UnexpectedMessage),
        Some(ErrorCode::UnknownTicket),
        Some(ErrorCode::UnexpectedMessage),
        Some(ErrorCode::BadCiphertext),
        Some(ErrorCode::BadCiphertext),
        Some(ErrorCode::ResourceExhausted),
        Some(ErrorCode::Timeout),
    ];

    std::thread::scope(|scope| {
        let handles: Vec<_> = attacks.into_iter().map(|(name, f)| (name, scope.spawn(f))).collect();

        // Meanwhile a well-behaved client preprocesses and infers, twice.
        let mut conn = Connection::connect(addr, Duration::from_secs(20)).unwrap();
        let got_arch = conn.hello(MODEL, Some(arch.hash())).unwrap();
        for _ in 0..2 {
            let (bytes, _) = preprocess(&mut conn, &got_arch, &mut rng).unwrap();
            let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).unwrap();
            let x: Vec<Fp> = (0..arch.input_len()).map(|_| Fp::from_i64(rng.random_range(0..=256))).collect();
            let logits = infer(&mut conn, &got_arch, &Ticket { header, bytes }, &x).unwrap();
            let reference =
                FixedPointReference::trace_encoded(&model, x.clone()).unwrap().maps.pop().unwrap();
            let bound = FixedPointReference::error_bound(&model, &x).unwrap();
            for ((g, w), b) in logits.iter().zip(&reference).zip(&bound) {
                assert!((g.to_i64_centered() - w.to_i64_centered()).abs() <= *b);
            }
        }

        for ((name, h), want) in handles.into_iter().zip(expected) {
            let got = h.join().unwrap_or_else(|_| panic!("{name}: the attacking thread panicked"));
            assert_eq!(got, want, "{name}");
        }
    });
    // The only tickets left are the three the limit test made legitimately and never used.
    assert_eq!(server.state.tickets.usage().0, 3, "hostile clients left no tickets behind");
}

/// A client that disconnects in every phase of preprocessing and of the online phase; the server
/// keeps serving, and only a ticket whose preprocessing completed can remain (until its TTL).
#[test]
fn disconnects_in_every_phase_leave_the_server_serving() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(100);
    let model = random_model(MODEL, &mut rng);
    let server = TestServer::start(vec![served(&model)], Limits::default());
    let addr = server.addr;
    let io = Duration::from_secs(20);

    // After the handshake.
    {
        let mut c = Connection::connect(addr, io).unwrap();
        c.hello(MODEL, None).unwrap();
    }
    // In the middle of the first HE round, and right after it.
    for cut in [1usize, usize::MAX] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello()).unwrap();
        s.write_all(&frame(&Message::TicketRequest { model_id: MODEL })).unwrap();
        let (_, blobs) = ClientPreprocessing::new(&model.arch, [0; 16], &mut rng).unwrap();
        let mut sent = 0;
        'blobs: for (i, b) in blobs.iter().enumerate() {
            for c in blob_chunks(HeRound::MaskCiphertexts, i as u32, b) {
                s.write_all(&frame(&Message::HeChunk(c))).unwrap();
                sent += 1;
                if sent == cut {
                    break 'blobs;
                }
            }
        }
        if cut == usize::MAX {
            s.write_all(&frame(&Message::HeRoundEnd {
                round: HeRound::MaskCiphertexts,
                blobs: blobs.len() as u32,
            }))
            .unwrap();
        }
        drop(s);
    }
    // In the middle of the online phase: the ticket is spent the moment it is named.
    let ticket = {
        let mut c = Connection::connect(addr, io).unwrap();
        let arch = c.hello(MODEL, None).unwrap();
        preprocess(&mut c, &arch, &mut rng).unwrap().0
    };
    assert_eq!(server.state.tickets.usage().0, 1);
    {
        let header = core_nostd::ticket::TicketHeader::from_bytes(&ticket).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello()).unwrap();
        s.write_all(&frame(&Message::OnlineBegin { ticket_id: TicketId(header.ticket_id) })).unwrap();
        let part = [Fp::ZERO; 3];
        let chunk = FieldChunk { layer: 0, offset: 0, values: FieldElems::from_values(&part) };
        s.write_all(&frame(&Message::MaskedInput(chunk))).unwrap();
    }
    // The server handles the frames asynchronously: wait (bounded) until it has redeemed it.
    let mut waited = 0;
    while server.state.tickets.usage().0 != 0 && waited < 200 {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    assert_eq!(server.state.tickets.usage().0, 0, "the named ticket is gone");

    // The server still serves.
    let mut c = Connection::connect(addr, io).unwrap();
    let arch = c.hello(MODEL, None).unwrap();
    let (bytes, _) = preprocess(&mut c, &arch, &mut rng).unwrap();
    let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).unwrap();
    let x = vec![Fp::from_i64(17); arch.input_len()];
    infer(&mut c, &arch, &Ticket { header, bytes }, &x).unwrap();
}
