//! The server's ticket store: single-use preprocessing material under a ticket id.
//!
//! A ticket is what preprocessing leaves on the server for one future inference (DESIGN §4: the
//! masks `s_i`, `u_i`, `v_i`). Security requires that a ticket is used at most once: reusing
//! `s, u, v` with a second input lets the client subtract two online transcripts. So the only way
//! to read a ticket is [`TicketStore::redeem`], which removes it atomically; a second redeem of the
//! same id fails, whether the first one succeeded or the inference later failed.
//!
//! Tickets also expire (a TTL bounds how long secret material sits in memory) and the store has
//! a hard memory bound, so a client that preprocesses without ever running inferences cannot grow
//! the server without limit: when the bound is reached, new tickets are refused (not evicted:
//! silently evicting would let one client destroy another's tickets).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A 16-byte ticket identifier, drawn uniformly by the server (unguessable).
pub type TicketId = [u8; 16];

/// Anything stored as a ticket reports its size, so the store can enforce its memory bound.
pub trait TicketPayload {
    /// Approximate heap + inline size in bytes.
    fn size_bytes(&self) -> usize;
}

/// Limits of a [`TicketStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TicketLimits {
    /// Time after issue at which a ticket can no longer be redeemed.
    pub ttl: Duration,
    /// Upper bound on the summed `size_bytes` of live tickets.
    pub max_bytes: usize,
    /// Upper bound on the number of live tickets.
    pub max_tickets: usize,
}

impl Default for TicketLimits {
    fn default() -> Self {
        TicketLimits { ttl: Duration::from_secs(24 * 3600), max_bytes: 512 << 20, max_tickets: 100_000 }
    }
}

/// Why a ticket could not be stored or redeemed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketError {
    /// No live ticket has this id: never issued, or expired and swept.
    Unknown,
    /// The ticket was already redeemed (tickets are single-use).
    AlreadyUsed,
    /// The ticket exists but is past its TTL (it is removed).
    Expired,
    /// The ticket was issued for another model.
    WrongModel,
    /// Storing it would exceed the memory or count bound.
    StoreFull,
    /// The id is already taken (a collision of 128-bit random ids means a broken RNG).
    DuplicateId,
}

impl std::fmt::Display for TicketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TicketError::Unknown => "unknown ticket (never issued, or expired)",
            TicketError::AlreadyUsed => "ticket already used (tickets are single-use)",
            TicketError::Expired => "ticket expired",
            TicketError::WrongModel => "ticket belongs to another model",
            TicketError::StoreFull => "ticket store is full",
            TicketError::DuplicateId => "duplicate ticket id",
        })
    }
}

impl std::error::Error for TicketError {}

struct Entry<T> {
    model: [u8; 32],
    issued: Instant,
    payload: T,
}

struct Inner<T> {
    entries: HashMap<TicketId, Entry<T>>,
    /// Ids redeemed within the last TTL, kept (16 bytes + an instant each, bounded by the ticket
    /// count bound) so a replay gets the precise error "already used" rather than "unknown".
    spent: HashMap<TicketId, Instant>,
    bytes: usize,
}

/// Thread-safe store of single-use tickets with a TTL and a memory bound.
pub struct TicketStore<T> {
    limits: TicketLimits,
    inner: Mutex<Inner<T>>,
}

impl<T: TicketPayload> std::fmt::Debug for TicketStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (count, bytes) = self.usage();
        f.debug_struct("TicketStore")
            .field("limits", &self.limits)
            .field("count", &count)
            .field("bytes", &bytes)
            .finish()
    }
}

impl<T: TicketPayload> TicketStore<T> {
    pub fn new(limits: TicketLimits) -> Self {
        TicketStore {
            limits,
            inner: Mutex::new(Inner { entries: HashMap::new(), spent: HashMap::new(), bytes: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding the lock cannot leave the map half-updated (every mutation is a
        // single insert/remove plus a counter update), so recovering from poisoning is sound.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Store `payload` for model `model` (architecture hash) under `id`, issued `now`.
    pub fn insert_at(
        &self,
        id: TicketId,
        model: [u8; 32],
        payload: T,
        now: Instant,
    ) -> Result<(), TicketError> {
        let size = payload.size_bytes();
        let mut inner = self.lock();
        Self::sweep_locked(&mut inner, self.limits.ttl, now);
        if inner.entries.contains_key(&id) || inner.spent.contains_key(&id) {
            return Err(TicketError::DuplicateId);
        }
        if inner.entries.len() >= self.limits.max_tickets
            || inner.bytes.saturating_add(size) > self.limits.max_bytes
        {
            return Err(TicketError::StoreFull);
        }
        inner.bytes += size;
        inner.entries.insert(id, Entry { model, issued: now, payload });
        Ok(())
    }

    /// [`Self::insert_at`] at the current instant.
    pub fn insert(&self, id: TicketId, model: [u8; 32], payload: T) -> Result<(), TicketError> {
        self.insert_at(id, model, payload, Instant::now())
    }

    /// Take the ticket out of the store: it can never be redeemed again, even if this call
    /// returns an error (wrong model or expired tickets are destroyed as well, so probing ids with
    /// the wrong model cannot be used to keep a ticket alive or test for it repeatedly).
    pub fn redeem_at(&self, id: &TicketId, model: &[u8; 32], now: Instant) -> Result<T, TicketError> {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.remove(id) else {
            return Err(if inner.spent.contains_key(id) {
                TicketError::AlreadyUsed
            } else {
                TicketError::Unknown
            });
        };
        inner.bytes -= entry.payload.size_bytes();
        if inner.spent.len() >= self.limits.max_tickets {
            Self::sweep_locked(&mut inner, self.limits.ttl, now);
        }
        if inner.spent.len() < self.limits.max_tickets {
            inner.spent.insert(*id, entry.issued);
        }
        drop(inner);
        if now.saturating_duration_since(entry.issued) > self.limits.ttl {
            return Err(TicketError::Expired);
        }
        if &entry.model != model {
            return Err(TicketError::WrongModel);
        }
        Ok(entry.payload)
    }

    /// [`Self::redeem_at`] at the current instant.
    pub fn redeem(&self, id: &TicketId, model: &[u8; 32]) -> Result<T, TicketError> {
        self.redeem_at(id, model, Instant::now())
    }

    /// Drop expired tickets; returns how many were dropped.
    pub fn sweep_at(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        Self::sweep_locked(&mut inner, self.limits.ttl, now)
    }

    fn sweep_locked(inner: &mut Inner<T>, ttl: Duration, now: Instant) -> usize {
        let before = inner.entries.len();
        let mut freed = 0usize;
        inner.entries.retain(|_, e| {
            let keep = now.saturating_duration_since(e.issued) <= ttl;
            if !keep {
                freed += e.payload.size_bytes();
            }
            keep
        });
        inner.bytes -= freed;
        inner.spent.retain(|_, issued| now.saturating_duration_since(*issued) <= ttl);
        before - inner.entries.len()
    }

    /// (live tickets, bytes they account for).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Blob(usize);
    impl TicketPayload for Blob {
        fn size_bytes(&self) -> usize {
            self.0
        }
    }

    const M: [u8; 32] = [1; 32];

    fn store(max_bytes: usize) -> TicketStore<Blob> {
        TicketStore::new(TicketLimits { ttl: Duration::from_secs(10), max_bytes, max_tickets: 3 })
    }

    #[test]
    fn a_ticket_redeems_once() {
        let s = store(1000);
        s.insert([7; 16], M, Blob(10)).unwrap();
        assert_eq!(s.redeem(&[7; 16], &M), Ok(Blob(10)));
        assert_eq!(s.redeem(&[7; 16], &M), Err(TicketError::AlreadyUsed));
        assert_eq!(s.redeem(&[8; 16], &M), Err(TicketError::Unknown));
        assert_eq!(s.usage(), (0, 0));
    }

    #[test]
    fn wrong_model_destroys_the_ticket() {
        let s = store(1000);
        s.insert([7; 16], M, Blob(10)).unwrap();
        assert_eq!(s.redeem(&[7; 16], &[2; 32]), Err(TicketError::WrongModel));
        assert_eq!(s.redeem(&[7; 16], &M), Err(TicketError::AlreadyUsed));
    }

    #[test]
    fn expiry_and_sweep() {
        let s = store(1000);
        let t0 = Instant::now();
        s.insert_at([1; 16], M, Blob(10), t0).unwrap();
        s.insert_at([2; 16], M, Blob(10), t0).unwrap();
        assert_eq!(s.redeem_at(&[1; 16], &M, t0 + Duration::from_secs(11)), Err(TicketError::Expired));
        assert_eq!(s.sweep_at(t0 + Duration::from_secs(11)), 1);
        assert_eq!(s.usage(), (0, 0));
    }

    #[test]
    fn bounds_refuse_new_tickets() {
        let s = store(25);
        s.insert([1; 16], M, Blob(10)).unwrap();
        s.insert([2; 16], M, Blob(10)).unwrap();
        assert_eq!(s.insert([3; 16], M, Blob(10)), Err(TicketError::StoreFull));
        assert_eq!(s.insert([2; 16], M, Blob(1)), Err(TicketError::DuplicateId));
        s.insert([3; 16], M, Blob(5)).unwrap();
        assert_eq!(s.insert([4; 16], M, Blob(0)), Err(TicketError::StoreFull), "count bound");
        assert_eq!(s.usage(), (3, 25));
    }
}
