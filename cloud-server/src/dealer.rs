//! A trusted dealer: makes matching client and server tickets IN THE CLEAR.
//!
//! **Insecure by construction** and compiled only for this crate's unit tests: whoever runs it
//! knows the client's masks `r_i`. It lets the online engine's tests run without HE; every
//! cross-crate test and the demo use real HE preprocessing (`crate::he`).

use core_nostd::mask::MaskStream;
use core_nostd::ticket::{write_body, TicketHeader};
use core_nostd::truncation::truncate_client_share;
use core_nostd::Fp;
use rand::RngCore;

use crate::inference::ServerMaterial;
use crate::model::merged::linear_reference;
use crate::model::MergedModel;

/// The values HE preprocessing produces, computed in the clear: the client's ticket bytes
/// (`core_nostd::ticket` layout) and the server's material.
pub fn deal(m: &MergedModel, rng: &mut impl RngCore) -> (Vec<u8>, ServerMaterial) {
    let arch = &m.arch;
    let l = arch.maps.len();
    let mut uniform = |n: usize| -> Vec<Fp> { (0..n).map(|_| core_nostd::mask::uniform_fp(rng)).collect() };
    let s: Vec<Vec<Fp>> = arch.maps.iter().map(|s| uniform(s.kind.output_len())).collect();
    let u: Vec<Vec<Fp>> = arch.maps[..l - 1].iter().map(|s| uniform(s.kind.output_len())).collect();
    let v: Vec<Vec<Fp>> = arch.maps[..l - 1].iter().map(|s| uniform(s.kind.output_len())).collect();
    let mut ticket_id = [0u8; 16];
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut ticket_id);
    rng.fill_bytes(&mut seed);
    let header = TicketHeader { arch_hash: arch.hash(), ticket_id, seed };
    let yc: Vec<Vec<Fp>> = (0..l)
        .map(|i| {
            let mut stream = MaskStream::for_map_input(&header.seed, i as u32);
            let r: Vec<Fp> = (0..arch.maps[i].kind.input_len()).map(|_| stream.next_fp()).collect();
            let wr = linear_reference(&arch.maps[i].kind, &m.maps[i].weights, &r);
            let t = u32::from(arch.maps[i].truncate_bits);
            wr.iter().zip(&s[i]).map(|(&a, &b)| truncate_client_share(a - b, t)).collect()
        })
        .collect();
    let e: Vec<Vec<Fp>> = (0..l - 1)
        .map(|i| yc[i].iter().zip(&u[i]).zip(&v[i]).map(|((&y, &u), &v)| y * u - v).collect())
        .collect();
    let mut ticket = header.to_bytes().to_vec();
    let yc_refs: Vec<&[Fp]> = yc.iter().map(Vec::as_slice).collect();
    let e_refs: Vec<&[Fp]> = e.iter().map(Vec::as_slice).collect();
    let _ = write_body::<()>(&yc_refs, &e_refs, |b| {
        ticket.extend_from_slice(b);
        Ok(())
    });
    (ticket, ServerMaterial { s, u, v })
}
