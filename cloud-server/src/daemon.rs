//! The TCP daemon: accepts connections and runs one [`ServerSession`] per connection.
//!
//! All protocol logic lives in the sans-I/O [`ServerSession`]; this module only moves bytes and
//! enforces the limits that need a clock or a socket:
//!
//! * at most `max_sessions` connections at once (a semaphore): a connection over the limit gets
//!   `Refused{Busy}` and is closed, so a flood of connections cannot exhaust memory or threads;
//! * an idle timeout on every read and write (a client that sends one byte per second is cut off
//!   once a frame stalls past the timeout... and a hard per-connection lifetime (`session_timeout`)
//!   bounds even a client that trickles just fast enough);
//! * frames are bounded by the wire format (`MAX_FRAME_SIZE`): the decoder refuses an oversized
//!   length prefix before buffering anything;
//! * graceful shutdown: when the shutdown future resolves, the daemon stops accepting, gives
//!   running sessions a grace period to finish, then drops them.
//!
//! CPU-heavy steps (the online GEMM, the HE rounds) run inside `block_in_place`, which needs the
//! multi-threaded tokio runtime; [`serve`] refuses to start on a current-thread runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use core_nostd::wire::{ErrorCode, FrameDecoder, Message, RefuseReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::session::{push_frame, Flow, ServerSession, ServerState, SessionError};

/// How long running sessions may take to finish after shutdown was requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the daemon could not run.
#[derive(Debug)]
pub enum DaemonError {
    /// The runtime is current-thread; CPU-heavy steps need `block_in_place`.
    NeedsMultiThreadRuntime,
    Io(std::io::Error),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::NeedsMultiThreadRuntime => {
                write!(f, "the daemon needs a multi-threaded tokio runtime")
            }
            DaemonError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DaemonError {}

/// Serve connections from `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return Err(DaemonError::NeedsMultiThreadRuntime);
    }
    let addr = listener.local_addr().map_err(DaemonError::Io)?;
    tracing::info!(%addr, models = ?state.models.keys().collect::<Vec<_>>(), "serving");
    let permits = Arc::new(Semaphore::new(state.limits.max_sessions));
    let mut sessions = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        sessions.spawn(connection(stream, peer, state.clone(), permit));
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "refusing connection: at max_sessions");
                        sessions.spawn(refuse_busy(stream));
                    }
                }
            }
            _ = sweep.tick() => {
                let dropped = state.tickets.sweep_at(std::time::Instant::now());
                if dropped > 0 {
                    tracing::info!(dropped, "expired tickets dropped");
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    tracing::info!(running = sessions.len(), "shutting down: no new connections");
    let drain = async { while sessions.join_next().await.is_some() {} };
    if timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(running = sessions.len(), "grace period over: dropping sessions");
        sessions.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn refuse_busy(mut stream: TcpStream) {
    let mut out = Vec::new();
    if push_frame(&mut out, &Message::Refused { reason: RefuseReason::Busy }).is_ok() {
        let _ = timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    }
    let _ = stream.shutdown().await;
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let limits = state.limits;
    let mut session = ServerSession::new(state);
    let mut decoder = Box::new(FrameDecoder::new());
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let deadline = Instant::now() + limits.session_timeout();
    tracing::debug!(%peer, "connected");
    let reason = loop {
        let wait = limits.idle_timeout().min(deadline.saturating_duration_since(Instant::now()));
        let n = match timeout(wait, stream.read(&mut buf)).await {
            Err(_) => {
                session.fail(
                    &SessionError { code: ErrorCode::Timeout, detail: "idle or session timeout".into() },
                    &mut out,
                );
                let _ = timeout(Duration::from_secs(1), stream.write_all(&out)).await;
                break "timeout";
            }
            Ok(Ok(0)) => break "peer closed",
            Ok(Ok(n)) => n,
            Ok(Err(_)) => break "read error",
        };
        let mut input = &buf[..n];
        let mut flow = Flow::Continue;
        while !input.is_empty() && flow == Flow::Continue {
            match decoder.next_message(&mut input) {
                Ok(Some(msg)) => flow = tokio::task::block_in_place(|| session.handle(&msg, &mut out)),
                Ok(None) => break,
                Err(e) => {
                    session
                        .fail(&SessionError { code: ErrorCode::Malformed, detail: e.to_string() }, &mut out);
                    flow = Flow::Close;
                }
            }
        }
        if !out.is_empty() {
            match timeout(limits.idle_timeout(), stream.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                _ => break "write failed or timed out",
            }
        }
        if flow == Flow::Close {
            break "closed by protocol";
        }
    };
    let _ = stream.shutdown().await;
    tracing::debug!(%peer, reason, inferences = session.inferences(), "disconnected");
}

/// A daemon on a loopback port in its own thread and multi-threaded runtime: what the embedded
/// demo server and the integration tests use. Dropping it shuts the daemon down gracefully.
#[derive(Debug)]
pub struct LocalDaemon {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalDaemon {
    /// Bind `127.0.0.1:0` and serve `state` until dropped.
    pub fn start(state: Arc<ServerState>) -> std::io::Result<LocalDaemon> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new().name("local-daemon".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot register the listener");
                        return;
                    }
                };
                let shutdown = async {
                    let _ = rx.await;
                };
                if let Err(e) = serve(listener, st, shutdown).await {
                    tracing::error!(error = %e, "daemon stopped");
                }
            });
        })?;
        Ok(LocalDaemon { addr, state, shutdown: Some(tx), thread: Some(thread) })
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
