//! Ticket slots in the ESP32-C3's SPI flash.
//!
//! Tickets are up to ~170 KB (`minionn-sq`) against 400 KB of RAM that Wi-Fi mostly takes, so
//! they live in flash and are streamed (core-nostd's `provision` module owns the slot format:
//! header page written last, magic cleared to burn). This module only maps slots to flash
//! addresses and talks to esp-storage.
//!
//! # Where the slots are
//!
//! The ticket region is the data partition labelled `tickets` in the partition table
//! (`partitions.csv` in this directory: 1.5 MB at `0x200000`, right after a 1.9 MB app
//! partition on a 4 MB part). A board flashed with espflash's default table has no such
//! partition; then the firmware falls back to the same fixed range, `0x200000..0x380000`, which
//! lies inside the default factory partition but far past the end of the image (~1 MB), and
//! espflash only erases the sectors it writes. Slots are [`SLOT_LEN`] = 192 KB (three 64 KB
//! blocks, so erasing one uses fast block erases), eight of them in 1.5 MB.
//!
//! # Sharing the flash
//!
//! A single inference needs the store twice at once: the session owns the ticket body that
//! streams from one slot, while the firmware burns the next slot between inferences, and
//! `SlotBody` (core-nostd) keeps a `&mut` to its store for the whole session. So the flash
//! driver sits in a [`RefCell`] inside [`FlashTickets`], and each slot gets its own cheap
//! [`SlotHandle`] (`&FlashTickets`) implementing `TicketStore`. The `RefCell` is only
//! borrowed inside one flash call, never across an `.await`, so the borrow cannot fail in
//! practice; if it ever did it is a typed error, not a panic.

use core::cell::RefCell;

use core_nostd::provision::{TicketStore, PAGE};
use esp_bootloader_esp_idf::partitions::{self, PARTITION_TABLE_MAX_LEN};
use esp_storage::{FlashStorage, FlashStorageError};

/// Label of the ticket partition in the partition table.
pub const PARTITION_LABEL: &str = "tickets";
/// Fallback ticket region when the partition table has no `tickets` partition.
pub const FALLBACK_OFFSET: u32 = 0x20_0000;
/// Length of the fallback region (1.5 MB).
pub const FALLBACK_LEN: u32 = 0x18_0000;
/// Bytes per slot: the longest ticket the board accepts (`minionn-sq` needs ~162 KB).
pub const SLOT_LEN: u32 = 0x3_0000;
/// Most slots the firmware handles (the fallback region holds exactly this many).
pub const MAX_SLOTS: usize = 8;

const _: () = assert!((SLOT_LEN as usize).is_multiple_of(PAGE));
const _: () = assert!(SLOT_LEN.is_multiple_of(FlashStorage::SECTOR_SIZE));
const _: () = assert!(FALLBACK_LEN / SLOT_LEN == MAX_SLOTS as u32);

/// Why a flash operation on the ticket region failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The flash driver reported an error.
    Flash(FlashStorageError),
    /// A slot number or a range outside the slot.
    OutOfRange,
    /// The flash is in use by another call (a logic error: it is never held across awaits).
    Busy,
    /// The ticket region does not fit in the flash chip.
    NoRegion { flash_len: u32 },
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::Flash(e) => write!(f, "flash: {e:?}"),
            StoreError::OutOfRange => write!(f, "access outside the ticket slot"),
            StoreError::Busy => write!(f, "flash busy"),
            StoreError::NoRegion { flash_len } => {
                write!(f, "no room for the ticket region in a flash of {flash_len} bytes")
            }
        }
    }
}

impl From<FlashStorageError> for StoreError {
    fn from(e: FlashStorageError) -> Self {
        StoreError::Flash(e)
    }
}

/// The ticket region of the flash.
#[derive(Debug)]
pub struct FlashTickets {
    flash: RefCell<FlashStorage<'static>>,
    base: u32,
    slots: u32,
    /// `true` when the region comes from the partition table.
    is_partition: bool,
}

impl FlashTickets {
    /// Find the ticket region (partition table first, the fixed range otherwise).
    pub fn new(mut flash: FlashStorage<'static>) -> Result<Self, StoreError> {
        let (base, len, is_partition) = match find_partition(&mut flash) {
            Some((offset, len)) => (offset, len, true),
            None => (FALLBACK_OFFSET, FALLBACK_LEN, false),
        };
        let flash_len = flash.capacity() as u32;
        if base.checked_add(len).is_none_or(|end| end > flash_len)
            || !base.is_multiple_of(FlashStorage::SECTOR_SIZE)
        {
            return Err(StoreError::NoRegion { flash_len });
        }
        let slots = (len / SLOT_LEN).min(MAX_SLOTS as u32);
        if slots == 0 {
            return Err(StoreError::NoRegion { flash_len });
        }
        Ok(FlashTickets { flash: RefCell::new(flash), base, slots, is_partition })
    }

    /// Flash address of the region.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// Number of slots.
    pub fn slot_count(&self) -> u32 {
        self.slots
    }

    /// Whether the region is the `tickets` partition (else the fixed fallback range).
    pub fn is_partition(&self) -> bool {
        self.is_partition
    }

    /// A `TicketStore` view of the region.
    pub fn handle(&self) -> SlotHandle<'_> {
        SlotHandle { tickets: self }
    }

    /// Flash address of `len` bytes at `offset` in `slot`, checked to stay inside the slot.
    fn address(&self, slot: u32, offset: u32, len: usize) -> Result<u32, StoreError> {
        let end = u32::try_from(len).ok().and_then(|l| offset.checked_add(l));
        if slot >= self.slots || end.is_none_or(|end| end > SLOT_LEN) {
            return Err(StoreError::OutOfRange);
        }
        Ok(self.base + slot * SLOT_LEN + offset)
    }

    fn with_flash<T>(
        &self,
        f: impl FnOnce(&mut FlashStorage<'static>) -> Result<T, FlashStorageError>,
    ) -> Result<T, StoreError> {
        let mut flash = self.flash.try_borrow_mut().map_err(|_| StoreError::Busy)?;
        Ok(f(&mut flash)?)
    }
}

/// The `tickets` data partition, if the partition table has one.
fn find_partition(flash: &mut FlashStorage<'static>) -> Option<(u32, u32)> {
    let mut buf = [0u8; PARTITION_TABLE_MAX_LEN];
    let table = partitions::read_partition_table(flash, &mut buf).ok()?;
    let found = table
        .iter()
        .find(|p| p.label_as_str() == PARTITION_LABEL && p.raw_type() == 0x01)
        .map(|p| (p.offset(), p.len()));
    found
}

/// Bytes per flash read through the bounce buffer.
const READ_CHUNK: usize = 64;

/// A word-aligned buffer: esp-storage copies an unaligned buffer through a 4 KB one on the stack.
#[repr(C, align(4))]
struct Aligned<const N: usize>([u8; N]);

/// One view of the ticket region; cheap to make, one per ticket an inference streams.
#[derive(Debug, Clone, Copy)]
pub struct SlotHandle<'t> {
    tickets: &'t FlashTickets,
}

impl TicketStore for SlotHandle<'_> {
    type Error = StoreError;

    fn slots(&self) -> u32 {
        self.tickets.slots
    }

    fn slot_len(&self) -> u32 {
        SLOT_LEN
    }

    fn erase(&mut self, slot: u32) -> Result<(), StoreError> {
        let from = self.tickets.address(slot, 0, SLOT_LEN as usize)?;
        self.tickets.with_flash(|f| f.erase(from, from + SLOT_LEN))
    }

    fn program(&mut self, slot: u32, offset: u32, page: &[u8; PAGE]) -> Result<(), StoreError> {
        if !(offset as usize).is_multiple_of(PAGE) {
            return Err(StoreError::OutOfRange);
        }
        let at = self.tickets.address(slot, offset, PAGE)?;
        let aligned = Aligned(*page);
        self.tickets.with_flash(|f| f.write_nor(at, &aligned.0))
    }

    fn read(&mut self, slot: u32, offset: u32, buf: &mut [u8]) -> Result<(), StoreError> {
        let at = self.tickets.address(slot, offset, buf.len())?;
        let mut bounce = Aligned([0u8; READ_CHUNK]);
        self.tickets.with_flash(|f| {
            for (i, chunk) in buf.chunks_mut(READ_CHUNK).enumerate() {
                let part = &mut bounce.0[..chunk.len()];
                f.read_nor(at + (i * READ_CHUNK) as u32, part)?;
                chunk.copy_from_slice(part);
            }
            Ok(())
        })
    }

    fn burn(&mut self, slot: u32) -> Result<(), StoreError> {
        // Clearing the 4-byte magic (bits 1 -> 0 only, no erase) kills the ticket for good.
        let at = self.tickets.address(slot, 0, 4)?;
        let zero = Aligned([0u8; 4]);
        self.tickets.with_flash(|f| f.write_nor(at, &zero.0))
    }
}
