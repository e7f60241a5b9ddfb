//! The online phase end to end over loopback TCP: the real tokio daemon, the real host client
//! (driving the core-nostd state machine), tickets from HE preprocessing.

use std::time::Duration;

use cloud_server::config::Limits;
use cloud_server::model::FixedPointReference;
use core_nostd::wire::{ErrorCode, RefuseReason};
use core_nostd::Fp;
use edge_client::online::{infer, OnlineError};
use edge_client::preprocess::preprocess;
use edge_client::tickets::Ticket;
use edge_client::transport::{Connection, TransportError};
use integration_tests::{random_model, served, TestServer};
use rand::{Rng, SeedableRng};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn ticket(bytes: Vec<u8>) -> Ticket {
    let header = core_nostd::ticket::TicketHeader::from_bytes(&bytes).expect("ticket header");
    Ticket { header, bytes }
}

/// `count` tickets for `model_id`, made by HE preprocessing on one connection.
fn make_tickets(
    server: &TestServer,
    model_id: &str,
    count: usize,
    rng: &mut rand::rngs::StdRng,
) -> Vec<Ticket> {
    let mut conn = Connection::connect(server.addr, IO_TIMEOUT).expect("connect");
    let arch = conn.hello(model_id, None).expect("hello");
    (0..count).map(|_| ticket(preprocess(&mut conn, &arch, rng).expect("preprocessing").0)).collect()
}

#[test]
fn private_inference_over_tcp_matches_the_reference_and_tickets_are_single_use() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let a = random_model("model-a", &mut rng);
    let b = random_model("model-b", &mut rng);
    let server = TestServer::start(vec![served(&a), served(&b)], Limits::default());

    let tickets = make_tickets(&server, "model-a", 4, &mut rng);
    let inputs: Vec<Vec<Fp>> = (0..4)
        .map(|_| (0..a.arch.input_len()).map(|_| Fp::from_i64(rng.random_range(0..=256))).collect())
        .collect();

    // Two clients at once, two inferences each on one connection.
    std::thread::scope(|scope| {
        for (ts, xs) in tickets.chunks(2).zip(inputs.chunks(2)) {
            let (addr, a) = (server.addr, &a);
            scope.spawn(move || {
                let mut conn = Connection::connect(addr, IO_TIMEOUT).expect("connect");
                let arch = conn.hello("model-a", Some(a.arch.hash())).expect("hello");
                for (t, x) in ts.iter().zip(xs) {
                    let logits = infer(&mut conn, &arch, t, x).expect("inference");
                    let trace = FixedPointReference::trace_encoded(a, x.clone()).expect("reference");
                    let bound = FixedPointReference::error_bound(a, x).expect("bound");
                    let expect = trace.maps.last().expect("logits");
                    for ((got, want), b) in logits.iter().zip(expect).zip(&bound) {
                        let (got, want) = (got.to_i64_centered(), want.to_i64_centered());
                        assert!((got - want).abs() <= *b, "logit {got}, reference {want}, bound {b}");
                    }
                }
            });
        }
    });

    // A reused ticket is refused with a precise error.
    let mut conn = Connection::connect(server.addr, IO_TIMEOUT).unwrap();
    let arch = conn.hello("model-a", None).unwrap();
    match infer(&mut conn, &arch, &tickets[0], &inputs[0]) {
        Err(OnlineError::Transport(TransportError::Server { code: ErrorCode::TicketReused, .. })) => {}
        other => panic!("reuse must be refused, got {other:?}"),
    }

    // A ticket of model b used under model a is refused (the server binds tickets to a model).
    let tb = make_tickets(&server, "model-b", 1, &mut rng).remove(0);
    let mut conn = Connection::connect(server.addr, IO_TIMEOUT).unwrap();
    let arch_a = conn.hello("model-a", None).unwrap();
    let mut forged = tb;
    // Rewrite the client-side binding so only the server's check can catch it.
    forged.header.arch_hash = arch_a.hash();
    forged.bytes[8..40].copy_from_slice(&arch_a.hash());
    match infer(&mut conn, &arch_a, &forged, &inputs[0]) {
        Err(OnlineError::Transport(TransportError::Server {
            code: ErrorCode::ArchitectureMismatch, ..
        })) => {}
        other => panic!("a ticket of another model must be refused, got {other:?}"),
    }

    // A wrong architecture hash and an unknown model are refused at the handshake.
    let mut conn = Connection::connect(server.addr, IO_TIMEOUT).unwrap();
    match conn.hello("model-a", Some(b.arch.hash())) {
        Err(TransportError::Refused(RefuseReason::ArchitectureMismatch)) => {}
        other => panic!("wrong hash must be refused, got {other:?}"),
    }
    let mut conn = Connection::connect(server.addr, IO_TIMEOUT).unwrap();
    match conn.hello("no-such-model", None) {
        Err(TransportError::Refused(RefuseReason::UnknownModel)) => {}
        other => panic!("unknown model must be refused, got {other:?}"),
    }
    assert_eq!(server.state.tickets.usage().0, 0, "every ticket was consumed exactly once");
}
