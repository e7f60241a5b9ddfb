//! The client's ticket wallet on a host: a directory of ticket files.
//!
//! Each ticket is one file `<ticket id in hex>.ticket` holding exactly the byte layout of
//! `core_nostd::ticket` (header + streamed body), so the same bytes can be copied to a board's
//! flash unchanged. Tickets live under `<dir>/<model id>/`.
//!
//! Single use is enforced on the client too: [`TicketWallet::take`] first renames the file
//! (an atomic step on one file system) so that no second process can take it, reads it, and
//! deletes it before the caller uses it. A crash after the rename loses the ticket instead of
//! risking its reuse, which is the right trade: reuse would leak the input to the server.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use core_nostd::arch::Architecture;
use core_nostd::ticket::{ticket_len, TicketFormatError, TicketHeader, HEADER_LEN};

/// Errors of the wallet.
#[derive(Debug)]
pub enum WalletError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// A file in the wallet is not a usable ticket for this model.
    BadTicket {
        path: PathBuf,
        reason: TicketFormatError,
    },
}

impl std::fmt::Display for WalletError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalletError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            WalletError::BadTicket { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for WalletError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalletError + '_ {
    move |source| WalletError::Io { path: path.to_path_buf(), source }
}

/// A ticket taken out of the wallet: its header and the whole ticket bytes.
#[derive(Debug)]
pub struct Ticket {
    pub header: TicketHeader,
    pub bytes: Vec<u8>,
}

/// A directory of tickets for one model.
#[derive(Debug, Clone)]
pub struct TicketWallet {
    dir: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TicketWallet {
    /// The wallet of model `model_id` under `root` (created if missing).
    pub fn open(root: &Path, model_id: &str) -> Result<TicketWallet, WalletError> {
        let dir = root.join(model_id);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(TicketWallet { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store a complete ticket (header + body) after checking its header and length.
    pub fn store(&self, arch: &Architecture, bytes: &[u8]) -> Result<PathBuf, WalletError> {
        let header = TicketHeader::from_bytes(bytes)
            .and_then(|h| h.check_model(arch).map(|()| h))
            .map_err(|reason| WalletError::BadTicket { path: self.dir.clone(), reason })?;
        if bytes.len() != ticket_len(arch) {
            return Err(WalletError::BadTicket {
                path: self.dir.clone(),
                reason: TicketFormatError::Truncated,
            });
        }
        let path = self.dir.join(format!("{}.ticket", hex(&header.ticket_id)));
        let tmp = path.with_extension("partial");
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Paths of the stored tickets, oldest file name first (stable order).
    fn list(&self) -> Result<Vec<PathBuf>, WalletError> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ticket"))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Number of unused tickets.
    pub fn count(&self) -> Result<usize, WalletError> {
        Ok(self.list()?.len())
    }

    /// Take one ticket out of the wallet for good (see the module docs). `None` when empty.
    pub fn take(&self, arch: &Architecture) -> Result<Option<Ticket>, WalletError> {
        for path in self.list()? {
            let claimed = path.with_extension("claimed");
            if fs::rename(&path, &claimed).is_err() {
                continue; // another process took it first
            }
            let bytes = fs::read(&claimed).map_err(io_err(&claimed))?;
            fs::remove_file(&claimed).map_err(io_err(&claimed))?;
            let header = TicketHeader::from_bytes(&bytes)
                .and_then(|h| h.check_model(arch).map(|()| h))
                .map_err(|reason| WalletError::BadTicket { path: path.clone(), reason })?;
            if bytes.len() != ticket_len(arch) || bytes.len() < HEADER_LEN {
                return Err(WalletError::BadTicket { path, reason: TicketFormatError::Truncated });
            }
            return Ok(Some(Ticket { header, bytes }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_nostd::arch::{AffineSpec, LinearKind, Shape};

    fn arch() -> Architecture {
        let mut maps = heapless::Vec::new();
        maps.push(AffineSpec { kind: LinearKind::Dense { inputs: 3, outputs: 2 }, truncate_bits: 4 })
            .unwrap();
        maps.push(AffineSpec { kind: LinearKind::Dense { inputs: 2, outputs: 1 }, truncate_bits: 4 })
            .unwrap();
        Architecture { model_id: "t".try_into().unwrap(), input: Shape::flat(3), maps, frac_bits: 6 }
    }

    #[test]
    fn tickets_are_taken_once() {
        let root = std::env::temp_dir().join(format!("wallet-test-{}", std::process::id()));
        let a = arch();
        let w = TicketWallet::open(&root, "t").unwrap();
        let mut bytes = vec![0u8; ticket_len(&a)];
        for id in 0..3u8 {
            let h = TicketHeader { arch_hash: a.hash(), ticket_id: [id; 16], seed: [id; 32] };
            bytes[..HEADER_LEN].copy_from_slice(&h.to_bytes());
            w.store(&a, &bytes).unwrap();
        }
        assert_eq!(w.count().unwrap(), 3);
        let mut seen = Vec::new();
        while let Some(t) = w.take(&a).unwrap() {
            seen.push(t.header.ticket_id[0]);
        }
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(w.count().unwrap(), 0);
        assert!(w.store(&a, &bytes[..10]).is_err(), "a truncated ticket is refused");
        fs::remove_dir_all(&root).unwrap();
    }
}
