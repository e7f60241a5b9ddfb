//! The emulated board (boards/mps2-an385) from the host's side: build its firmware, boot it in
//! QEMU against a cloud-server, provision it with tickets over its second UART, and parse what it
//! reports. Shared by the end-to-end test and the board report bench.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use core_nostd::arch::Architecture;
use edge_client::provision::provision;
use edge_client::tickets::Ticket;
use edge_client::transport::Connection;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The QEMU binary the emulated board needs (Debian package `qemu-system-arm`).
pub const QEMU: &str = "qemu-system-arm";

pub fn qemu_available() -> bool {
    Command::new(QEMU).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Whether the standard library of `target` is installed (`rustup target add`).
pub fn target_installed(target: &str) -> bool {
    Command::new("rustc")
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|dir| has_core(dir.trim()))
}

fn has_core(dir: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
        .unwrap_or(false)
}

/// Build a firmware crate under `boards/` in release mode (its own workspace, target and target
/// directory) and return the path of its ELF image.
pub fn build_firmware(board: &str, target: &str, binary: &str) -> Result<PathBuf, String> {
    let dir = root().join("boards").join(board);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.join("target"))
        // The firmware's own .cargo/config.toml carries its target and linker flags.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building boards/{board} failed ({status}); is `rustup target add {target}` done?"
        ));
    }
    Ok(dir.join("target").join(target).join("release").join(binary))
}

/// The emulated board's firmware.
pub fn build_emulated_board() -> Result<PathBuf, String> {
    build_firmware("mps2-an385", "thumbv6m-none-eabi", "board-mps2-an385")
}

/// One inference as the board reported it.
#[derive(Clone, Debug)]
pub struct BoardInference {
    /// Image index in the bundled sample.
    pub image: usize,
    pub slot: u32,
    pub label: usize,
    /// Fixed-point logits (centred integers).
    pub logits: Vec<i64>,
    /// Guest instructions of the client's own work (I/O waits excluded).
    pub instructions: u64,
    pub sent: u64,
    pub received: u64,
}

/// Everything a board run reported.
#[derive(Clone, Debug, Default)]
pub struct BoardRun {
    pub provisioned: u32,
    pub inferences: Vec<BoardInference>,
    pub static_ram: usize,
    pub stack_peak: usize,
    pub flash: usize,
    pub ticket_len: usize,
    /// Bytes the provisioner sent over the board's serial link.
    pub provisioning_bytes: u64,
    pub output: String,
}

fn field<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)).copied()
}

fn num<T: std::str::FromStr>(words: &[&str], name: &str) -> Result<T, String> {
    field(words, name).and_then(|v| v.parse().ok()).ok_or_else(|| format!("no `{name}` in {words:?}"))
}

/// Parse the board's semihosting output (format in boards/mps2-an385/src/main.rs).
pub fn parse_output(output: &str) -> Result<BoardRun, String> {
    let mut run = BoardRun { output: output.to_owned(), ..BoardRun::default() };
    let mut done = false;
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("provisioned") => run.provisioned = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0),
            Some("inference") => run.inferences.push(BoardInference {
                image: num(&words, "inference")?,
                slot: num(&words, "slot")?,
                label: num(&words, "label")?,
                logits: field(&words, "logits")
                    .ok_or("no logits")?
                    .split(',')
                    .map(|v| v.parse().map_err(|_| format!("bad logit in {line}")))
                    .collect::<Result<_, _>>()?,
                instructions: num(&words, "instructions")?,
                sent: num(&words, "sent")?,
                received: num(&words, "received")?,
            }),
            Some("memory") => {
                run.static_ram = num(&words, "static_ram")?;
                run.stack_peak = num(&words, "stack_peak")?;
                run.flash = num(&words, "flash")?;
                run.ticket_len = num(&words, "ticket_len")?;
            }
            Some("done") => done = true,
            Some("error:") | Some("panic:") => return Err(format!("the board failed:\n{output}")),
            _ => {}
        }
    }
    if done {
        Ok(run)
    } else {
        Err(format!("the board did not finish:\n{output}"))
    }
}

/// Boot the firmware `elf` in QEMU with UART0 connected to the server at `server`, hand it
/// `tickets` (for `arch`) over UART1 as `edge-client provision` does, and wait for its report.
pub fn run_emulated_board(
    elf: &Path,
    server: SocketAddr,
    arch: &Architecture,
    tickets: Vec<Ticket>,
    timeout: Duration,
) -> Result<BoardRun, String> {
    // QEMU connects to this listener as the board's provisioning UART: no port race.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let provisioning = listener.local_addr().map_err(|e| e.to_string())?;
    let mut qemu = Command::new(QEMU)
        .args(["-machine", "mps2-an385", "-cpu", "cortex-m3", "-nographic", "-monitor", "none"])
        .args(["-semihosting-config", "enable=on,target=native", "-icount", "shift=0"])
        .arg("-kernel")
        .arg(elf)
        .arg("-serial")
        .arg(format!("tcp:{server}"))
        .arg("-serial")
        .arg(format!("tcp:{provisioning}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {QEMU}: {e}"))?;
    let mut stdout = qemu.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });

    let provisioned = (|| -> Result<u64, String> {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("QEMU did not connect its provisioning UART: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let mut link = Connection::new(stream);
        let n = tickets.len();
        let done = provision(&mut link, arch, tickets, |_| {});
        if let Some(e) = done.error {
            return Err(format!("provisioning failed: {e}"));
        }
        if done.stored != n {
            return Err(format!("the board stored {} of {n} tickets", done.stored));
        }
        Ok(link.traffic().sent)
    })();

    if provisioned.is_err() {
        // The board would wait for tickets forever: stop it now rather than at the timeout.
        let _ = qemu.kill();
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match qemu.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = qemu.kill();
                let _ = qemu.wait();
                break None;
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = qemu.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let output = reader.join().unwrap_or_default();
    let provisioning_bytes = provisioned.map_err(|e| format!("{e}\nboard output:\n{output}\n{stderr}"))?;
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(format!("QEMU exited with {s}:\n{output}\n{stderr}")),
        None => return Err(format!("the board did not finish within {timeout:?}:\n{output}\n{stderr}")),
    }
    let mut run = parse_output(&output)?;
    run.provisioning_bytes = provisioning_bytes;
    Ok(run)
}
