//! Where the client's instructions go: the cost of each building block of an online inference,
//! measured on the emulated board (thumbv6m code, `qemu -icount shift=0`), one line per block:
//!
//! ```text
//! cost <block> <instructions per item>
//! ```
//!
//! `qemu-system-arm -machine mps2-an385 -cpu cortex-m3 -nographic -monitor none \
//!   -semihosting-config enable=on,target=native -icount shift=0 -kernel .../costs`
#![no_std]
#![no_main]

use board_mps2_an385::clock;
use core::hint::black_box;
use core_nostd::field::Fp;
use core_nostd::mask::MaskStream;
use core_nostd::online::client_square_share;
use core_nostd::provision::{SliceStore, SlotBody, TicketStore, PAGE};
use core_nostd::ticket::{TicketBody, TicketHeader};
use core_nostd::wire::{
    decode_frame, encode_frame, FieldChunk, FieldElems, Message, MAX_CHUNK_VALUES, MAX_FRAME_SIZE,
};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};

const N: u32 = 4096;

fn measure(name: &str, items: u32, f: impl FnOnce()) {
    let t0 = clock::now();
    f();
    let ticks = clock::now() - t0;
    hprintln!("cost {} {}", name, ticks * clock::INSTRUCTIONS_PER_TICK / u64::from(items));
}

#[entry]
fn main() -> ! {
    if let Some(p) = cortex_m::Peripherals::take() {
        clock::start(p.SYST);
    }
    let seed = [7u8; 32];
    measure("mask_element", N, || {
        let mut m = MaskStream::for_map_input(&seed, 1);
        for _ in 0..N {
            black_box(m.next_fp());
        }
    });
    let a = black_box(Fp::from_i64(123_456_789_012));
    let b = black_box(Fp::from_i64(-987_654_321));
    measure("field_mul", N, || {
        let mut x = a;
        for _ in 0..N {
            x = black_box(x * b);
        }
    });
    measure("square_share", N, || {
        for i in 0..N {
            black_box(client_square_share(a, black_box(Fp::from_i64(i as i64)), b, 6));
        }
    });
    let mut mem = [0u8; 16 * PAGE];
    let mut store = SliceStore::new(&mut mem, 16 * PAGE as u32);
    let _ = store.erase(0);
    let header = TicketHeader { arch_hash: [0; 32], ticket_id: [0; 16], seed };
    let mut page = [0u8; PAGE];
    page[..88].copy_from_slice(&header.to_bytes());
    let _ = store.program(0, 0, &page);
    let pairs = (16 * PAGE as u32 - 88) / 16;
    measure("ticket_pair_read", pairs, || {
        let mut body = SlotBody::new(&mut store, 0, 16 * PAGE as u32);
        let mut pair = [Fp::ZERO; 2];
        for _ in 0..pairs {
            // Erased flash reads as 0xFF..: not canonical, so count the read, not the value.
            black_box(body.read(&mut pair).is_err());
        }
    });
    let values = [Fp::from_i64(-5); MAX_CHUNK_VALUES];
    let mut buf = [0u8; MAX_FRAME_SIZE];
    measure("encode_value", 32 * MAX_CHUNK_VALUES as u32, || {
        for i in 0..32 {
            let c = FieldChunk { layer: 1, offset: i, values: FieldElems::from_values(&values) };
            black_box(encode_frame(&Message::MaskedActivation(c), &mut buf).map(|f| f.len()).ok());
        }
    });
    let c = FieldChunk { layer: 1, offset: 0, values: FieldElems::from_values(&values) };
    let len = encode_frame(&Message::ActivationDelta(c), &mut buf).map(|f| f.len()).unwrap_or(0);
    measure("decode_value", 32 * MAX_CHUNK_VALUES as u32, || {
        for _ in 0..32 {
            if let Ok((Message::ActivationDelta(c), _)) = decode_frame(black_box(&buf[..len])) {
                let mut out = [Fp::ZERO; MAX_CHUNK_VALUES];
                for (o, v) in out.iter_mut().zip(c.values.iter()) {
                    *o = v;
                }
                black_box(&out);
            }
        }
    });
    measure("pixel_encode", 784, || {
        for p in 0..784u32 {
            black_box(core_nostd::fixed_point::encode_pixel(black_box(p as u8), 6));
        }
    });
    hprintln!("done");
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}
