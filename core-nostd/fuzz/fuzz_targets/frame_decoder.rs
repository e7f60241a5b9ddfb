//! Any byte stream, delivered in any split, through the incremental frame decoder and the
//! one-shot decoders: errors are fine, panics and unbounded work are not.
#![no_main]

use core_nostd::wire::{decode_frame, decode_payload, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data);
    let _ = decode_payload(data);
    let Some((&split, rest)) = data.split_first() else { return };
    let step = usize::from(split % 64) + 1;
    let mut decoder = FrameDecoder::new();
    for piece in rest.chunks(step) {
        let mut input = piece;
        while !input.is_empty() {
            match decoder.next_message(&mut input) {
                Ok(Some(msg)) => {
                    let _ = msg.validate();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
