//! The firmware path end to end: the emulated board (boards/mps2-an385, built for thumbv6m like an
//! RP2040) boots in QEMU, receives tickets over its provisioning UART from the same code as
//! `edge-client provision`, connects its other UART to a real cloud-server, and runs private
//! inferences on images of the bundled sample. Each result must equal the fixed-point reference
//! (up to the documented truncation error), and every ticket must be consumed exactly once.
//!
//! Needs `qemu-system-arm` (Debian package) and the `thumbv6m-none-eabi` target. `.ci/run`
//! installs both and sets `REQUIRE_EMULATED_BOARD=1`, which turns a missing prerequisite into a
//! failure; elsewhere the test says what is missing and skips, so `cargo test` works on a fresh
//! machine.

use std::time::Duration;

use cloud_server::config::Limits;
use cloud_server::model::{idx, load_calibrated, reference::argmax};
use cloud_server::session::ServedModel;
use integration_tests::board::{
    build_emulated_board, qemu_available, root, run_emulated_board, target_installed, QEMU,
};
use integration_tests::{check_against_reference, make_tickets, TestServer};
use rand::SeedableRng;

/// (model, inferences): minionn-sq's 165 KB tickets exercise the streamed ticket store.
const RUNS: [(&str, usize); 3] = [("mlp-sq", 3), ("cryptonets-sq", 2), ("minionn-sq", 2)];

#[test]
fn emulated_board_private_inference_matches_the_reference() {
    if let Err(missing) = prerequisites() {
        assert!(std::env::var_os("REQUIRE_EMULATED_BOARD").is_none(), "{missing}");
        eprintln!("SKIPPED emulated board test: {missing}");
        return;
    }
    let elf = build_emulated_board().unwrap();
    let images =
        idx::read_images(&root().join("edge-client/data/fashion-mnist-t10k-200-images-idx3-ubyte")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (id, n) in RUNS {
        let merged =
            load_calibrated(&root().join(format!("cloud-server/models/{id}.onnx")), id).unwrap().merged;
        let server = TestServer::start(vec![ServedModel::from_merged(&merged)], Limits::default());
        let (arch, tickets) = make_tickets(server.addr, id, merged.arch.hash(), n, &mut rng);
        assert_eq!(server.state.tickets.usage().0, n, "{id}: the server holds its half of every ticket");

        let run = run_emulated_board(&elf, server.addr, &arch, tickets, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(run.provisioned, n as u32, "{id}");
        assert_eq!(run.inferences.len(), n, "{id}: one inference per ticket\n{}", run.output);
        for inf in &run.inferences {
            let pixels = images.pixels(inf.image).unwrap();
            let label = check_against_reference(&merged, pixels, &inf.logits)
                .unwrap_or_else(|e| panic!("{id} image {}: {e}", inf.image));
            assert_eq!(inf.label, argmax(&inf.logits), "{id}: the board's own label");
            println!(
                "{id} image {}: label {} (reference {label}), {} instructions, {} B sent, {} B received",
                inf.image, inf.label, inf.instructions, inf.sent, inf.received
            );
            assert!(inf.instructions > 0 && inf.sent > 0 && inf.received > 0);
        }
        assert_eq!(run.ticket_len, core_nostd::ticket::ticket_len(&arch), "{id}");
        println!(
            "{id}: static RAM {} B, stack peak {} B, firmware flash {} B",
            run.static_ram, run.stack_peak, run.flash
        );
        assert_eq!(server.state.tickets.usage().0, 0, "{id}: every ticket was used exactly once");
    }
}

fn prerequisites() -> Result<(), String> {
    if !qemu_available() {
        return Err(format!("{QEMU} not found (apt-get install qemu-system-arm)"));
    }
    if !target_installed("thumbv6m-none-eabi") {
        return Err(
            "the thumbv6m-none-eabi target is not installed (rustup target add thumbv6m-none-eabi)".into()
        );
    }
    Ok(())
}
