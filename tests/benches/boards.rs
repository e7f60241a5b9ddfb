//! The board report (issue "Boards"): per bundled model, what the client costs on a
//! microcontroller, measured on the emulated board (boards/mps2-an385: thumbv6m code, the
//! RP2040's instruction set, under `qemu -icount shift=0`) against a real cloud-server:
//! instructions of one online inference (I/O waits excluded), RAM (static + stack high-water mark),
//! ticket size, bytes on the wire; and the flash size of each firmware and of the client logic in
//! it, read from the ELF files.
//!
//! `cargo bench -p integration-tests --bench boards` (needs qemu-system-arm and the thumbv6m
//! target; builds the emulated board; reads the rp2040/esp32c3 ELFs if they were built with
//! `cargo build --release` in their directories). `--tickets N` (default 3) inferences per model.

use std::path::Path;
use std::time::Duration;

use cloud_server::config::Limits;
use cloud_server::model::load_calibrated;
use cloud_server::session::ServedModel;
use integration_tests::board::{build_emulated_board, root, run_emulated_board};
use integration_tests::{make_tickets, TestServer};
use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, SectionKind};
use rand::SeedableRng;

const MODELS: [&str; 3] = ["mlp-sq", "cryptonets-sq", "minionn-sq"];

/// Flash (file-backed allocated sections: code, constants, initial values of .data), static RAM
/// (writable allocated sections) and the bytes of symbols from core-nostd, of one ELF.
struct ElfSizes {
    flash: u64,
    ram: u64,
    core_nostd: u64,
}

fn elf_sizes(path: &Path) -> Result<ElfSizes, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = object::File::parse(&*data).map_err(|e| e.to_string())?;
    let (mut flash, mut ram) = (0, 0);
    for s in file.sections() {
        let SectionFlags::Elf { sh_flags } = s.flags() else { continue };
        let alloc = sh_flags & u64::from(object::elf::SHF_ALLOC) != 0;
        let write = sh_flags & u64::from(object::elf::SHF_WRITE) != 0;
        if !alloc {
            continue;
        }
        if s.kind() != SectionKind::UninitializedData && s.kind() != SectionKind::UninitializedTls {
            flash += s.size();
        }
        if write {
            ram += s.size();
        }
    }
    // After LTO much of core-nostd is inlined into its callers: this is a lower bound.
    let core_nostd =
        file.symbols().filter(|s| s.name().is_ok_and(|n| n.contains("core_nostd"))).map(|s| s.size()).sum();
    Ok(ElfSizes { flash, ram, core_nostd })
}

fn main() {
    let tickets: usize =
        std::env::args().skip_while(|a| a != "--tickets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(3);
    let elf = build_emulated_board().unwrap_or_else(|e| panic!("{e}"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    println!("## Emulated board (mps2-an385, thumbv6m code, qemu -icount shift=0), {tickets} inferences per model\n");
    println!("| model | instructions (median) | static RAM B | stack peak B | RAM total B | ticket B | sent B | received B | provisioning B |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for id in MODELS {
        let merged =
            load_calibrated(&root().join(format!("cloud-server/models/{id}.onnx")), id).unwrap().merged;
        let server = TestServer::start(vec![ServedModel::from_merged(&merged)], Limits::default());
        let (arch, batch) = make_tickets(server.addr, id, merged.arch.hash(), tickets, &mut rng);
        let run = run_emulated_board(&elf, server.addr, &arch, batch, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let mut counts: Vec<u64> = run.inferences.iter().map(|i| i.instructions).collect();
        counts.sort_unstable();
        let first = &run.inferences[0];
        println!(
            "| {id} | {} | {} | {} | {} | {} | {} | {} | {} |",
            counts[counts.len() / 2],
            run.static_ram,
            run.stack_peak,
            run.static_ram + run.stack_peak,
            run.ticket_len,
            first.sent,
            first.received,
            run.provisioning_bytes / tickets as u64
        );
    }
    println!("\n## Firmware images (release ELF; flash = code + constants + initial data)\n");
    println!("| firmware | flash B | static RAM B | core-nostd symbols B (lower bound, after LTO) |");
    println!("|---|---|---|---|");
    let boards = [
        ("emulated board (mps2-an385, thumbv6m)", elf.clone()),
        (
            "rp2040 (Pico W, thumbv6m)",
            root().join("boards/rp2040/target/thumbv6m-none-eabi/release/pico-w-client"),
        ),
        (
            "esp32c3 (riscv32imc)",
            root().join("boards/esp32c3/target/riscv32imc-unknown-none-elf/release/pi-esp32c3"),
        ),
    ];
    for (name, path) in boards {
        match elf_sizes(&path) {
            Ok(s) => println!("| {name} | {} | {} | {} |", s.flash, s.ram, s.core_nostd),
            Err(e) => println!("| {name} | not built ({e}) | | |"),
        }
    }
}
