//! The client's online state machine fed a ticket and server messages chosen by the fuzzer:
//! every violation must be a `ClientError`, never a panic or an out-of-bounds access.
#![no_main]

use core_nostd::arch::{AffineSpec, Architecture, LinearKind, Shape};
use core_nostd::client::OnlineClient;
use core_nostd::ticket::{SliceBody, TicketHeader, HEADER_LEN};
use core_nostd::wire::{decode_payload, Message};
use core_nostd::Fp;
use libfuzzer_sys::fuzz_target;

fn arch() -> Architecture {
    let input = Shape::new(1, 6, 5);
    let conv = LinearKind::Conv2d {
        input,
        out_channels: 2,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 2,
        pad_h: 1,
        pad_w: 0,
    };
    let mut maps = heapless::Vec::new();
    let _ = maps.push(AffineSpec { kind: conv, truncate_bits: 4 });
    let _ = maps.push(AffineSpec {
        kind: LinearKind::Dense { inputs: conv.output_len() as u32, outputs: 7 },
        truncate_bits: 3,
    });
    let _ = maps.push(AffineSpec { kind: LinearKind::Dense { inputs: 7, outputs: 3 }, truncate_bits: 2 });
    Architecture {
        model_id: heapless::String::try_from("fuzz").unwrap_or_default(),
        input,
        maps,
        frac_bits: 6,
    }
}

fuzz_target!(|data: &[u8]| {
    let arch = arch();
    // First bytes: a ticket (header forced valid for this architecture, body as given).
    let len = core_nostd::ticket::ticket_len(&arch);
    if data.len() < len {
        return;
    }
    let (ticket, rest) = data.split_at(len);
    let mut bytes = [0u8; 4096];
    let bytes = &mut bytes[..len];
    bytes.copy_from_slice(ticket);
    let header = TicketHeader { arch_hash: arch.hash(), ticket_id: [1; 16], seed: [2; 32] };
    bytes[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    let Ok(body) = SliceBody::of_ticket(bytes) else { return };
    let Ok(mut client) = OnlineClient::new(&arch, header, body) else { return };
    let x = [Fp::ZERO; 30];
    let mut out = [Fp::ZERO; 64];
    if client.mask_input(&x, &mut out).is_err() {
        return;
    }
    // Then: length-prefixed payloads of server messages.
    let mut logits = [Fp::ZERO; 3];
    let mut input = rest;
    while let Some((&n, tail)) = input.split_first() {
        let n = usize::from(n).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        input = tail;
        let result = match decode_payload(payload) {
            Ok(Message::ActivationDelta(c)) => {
                let d: heapless::Vec<Fp, 128> = c.values.iter().collect();
                client.on_square_masks(usize::from(c.layer), c.offset as usize, &d, &mut out).map(|_| false)
            }
            Ok(Message::OutputShare(c)) => {
                let ys: heapless::Vec<Fp, 128> = c.values.iter().collect();
                client.on_output(c.offset as usize, &ys, &mut logits)
            }
            _ => continue,
        };
        if result.is_err() {
            return;
        }
    }
});
