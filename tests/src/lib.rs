//! Helpers shared by the cross-crate integration tests in `tests/tests/`: an in-process daemon on
//! loopback, and a trusted dealer that makes matching client/server tickets in the clear (used
//! to test the online phase and the daemon independently of HE preprocessing).

use std::net::SocketAddr;
use std::sync::Arc;

use cloud_server::config::Limits;
use cloud_server::inference::{OnlineModel, ServerMaterial};
use cloud_server::model::merged::{linear_reference, weight_count};
use cloud_server::model::{AffineWeights, MergedModel};
use cloud_server::session::{ModelLayers, ServedModel, ServerState};
use core_nostd::arch::{AffineSpec, Architecture, LinearKind, Shape};
use core_nostd::mask::MaskStream;
use core_nostd::ticket::{write_body, TicketHeader};
use core_nostd::truncation::truncate_client_share;
use core_nostd::Fp;
use rand::{Rng, RngCore};

/// `W x` by direct loops: the linear layers of a test model.
pub struct DirectLayers(pub MergedModel);

impl cloud_server::inference::LinearLayers for DirectLayers {
    fn apply(&self, map: usize, x: &[Fp]) -> Vec<Fp> {
        linear_reference(&self.0.arch.maps[map].kind, &self.0.maps[map].weights, x)
    }
}

/// A small random model: conv (stride 2, padding) -> square -> dense -> square -> dense.
pub fn random_model(id: &str, rng: &mut impl Rng) -> MergedModel {
    let input = Shape::new(1, 12, 10);
    let conv = LinearKind::Conv2d {
        input,
        out_channels: 4,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 2,
        stride_w: 2,
        pad_h: 1,
        pad_w: 1,
    };
    let n1 = conv.output_len() as u32;
    let kinds =
        [conv, LinearKind::Dense { inputs: n1, outputs: 16 }, LinearKind::Dense { inputs: 16, outputs: 10 }];
    let mut maps = heapless::Vec::new();
    let mut weights = Vec::new();
    for kind in kinds {
        let _ = maps.push(AffineSpec { kind, truncate_bits: 6 });
        weights.push(AffineWeights {
            weights: (0..weight_count(&kind)).map(|_| rng.random_range(-40..=40)).collect(),
            bias: (0..kind.output_len()).map(|_| rng.random_range(-5000..=5000)).collect(),
        });
    }
    let arch = Architecture {
        model_id: heapless::String::try_from(id).expect("short id"),
        input,
        maps,
        frac_bits: 8,
    };
    MergedModel { arch, maps: weights }
}

/// A model as the daemon serves it, with direct (unoptimised) linear layers.
pub fn served(m: &MergedModel) -> ServedModel {
    let biases = m.maps.iter().map(|w| w.bias.iter().map(|&b| Fp::from_i64(b)).collect()).collect();
    let layers: ModelLayers = Box::new(DirectLayers(m.clone()));
    ServedModel {
        arch: m.arch.clone(),
        hash: m.arch.hash(),
        online: Arc::new(OnlineModel { arch: m.arch.clone(), layers, biases }),
    }
}

/// Trusted-dealer preprocessing: the values HE preprocessing produces, computed in the clear.
/// Returns the client's ticket bytes and the server's material.
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

/// A daemon running on loopback in its own multi-threaded runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(models: Vec<ServedModel>, limits: Limits) -> TestServer {
        let state = Arc::new(ServerState::new(models, limits));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let shutdown = async {
                    let _ = rx.await;
                };
                cloud_server::daemon::serve(listener, st, shutdown).await.expect("daemon");
            });
        });
        let addr = addr_rx.recv().expect("server started");
        TestServer { addr, state, shutdown: Some(tx), thread: Some(thread) }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Plaintext fixed-point evaluation of `m` on `x`, and per logit a rigorous bound on how far the
/// shared evaluation may drift from it: each local truncation adds at most one ulp, propagated
/// exactly through `|W|` and the square (`(y+e)^2 - y^2 = 2ye + e^2`).
pub fn reference_with_bound(m: &MergedModel, x: &[Fp]) -> (Vec<i64>, Vec<i64>) {
    use core_nostd::truncation::truncate_reference;
    let f = u32::from(m.arch.frac_bits);
    let mut v = x.to_vec();
    let mut err = vec![0i64; x.len()];
    let last = m.maps.len() - 1;
    for (i, (spec, w)) in m.arch.maps.iter().zip(&m.maps).enumerate() {
        let t = u32::from(spec.truncate_bits);
        let wx = linear_reference(&spec.kind, &w.weights, &v);
        let abs_w: Vec<i64> = w.weights.iter().map(|w| w.abs()).collect();
        let err_fp: Vec<Fp> = err.iter().map(|&e| Fp::from_i64(e)).collect();
        let werr = linear_reference(&spec.kind, &abs_w, &err_fp);
        let y: Vec<Fp> =
            wx.iter().zip(&w.bias).map(|(&a, &b)| truncate_reference(a + Fp::from_i64(b), t)).collect();
        err = werr.iter().map(|e| (e.to_i64_centered() >> t) + 2).collect();
        if i == last {
            return (y.iter().map(|v| v.to_i64_centered()).collect(), err);
        }
        v = y.iter().map(|&y| truncate_reference(y * y, f)).collect();
        err = y
            .iter()
            .zip(&err)
            .map(|(y, &e)| ((2 * y.to_i64_centered().abs() * e + e * e) >> f) + 2)
            .collect();
    }
    (Vec::new(), Vec::new())
}
