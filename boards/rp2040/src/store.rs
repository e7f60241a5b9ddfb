//! The ticket store: provisioned tickets in the upper 1.5 MiB of the Pico W's flash.
//!
//! A ticket (DESIGN §4) is up to ~170 KB, far more than the RP2040's 264 KB of RAM can spare, so
//! core-nostd's provisioning receiver writes it to flash page by page as it arrives over USB, and
//! an inference streams its body back out ([`core_nostd::provision::SlotBody`]); it is never held
//! in RAM whole. This module is only the flash side of core-nostd's
//! [`TicketStore`](core_nostd::provision::TicketStore) contract: which bytes of flash are a slot,
//! and how to erase, program, read and burn them. What a live ticket is (its header, written
//! last) and what burning means (clearing the header's magic, so a ticket is single use even
//! across resets) is core-nostd's.
//!
//! # Layout
//!
//! The region `TICKETS` of `memory.x` (`0x10080000..0x10200000`) is cut into [`SLOTS`] = 8
//! slots of [`SLOT_SIZE`] = 192 KiB, each holding one ticket from its first byte. 192 KiB is the
//! next multiple of 64 KiB above the largest bundled model's ticket (`minionn-sq`, ~162 KiB).
//!
//! # Sharing
//!
//! The provisioning task and the inference loop both use the store. They run on the one
//! executor thread and no flash call is held across an `.await`, so a `RefCell` guards the
//! driver (no critical section: one around a 192 KiB erase would keep USB and Wi-Fi interrupts
//! off for seconds). On top of that, [`Store::session`] is an async lock that a whole
//! provisioning transfer, or one whole inference, holds: provisioning erases slots that are not
//! live, and the ticket of a running inference is already burned (not live), so without the lock
//! a concurrent provisioning could erase it under the inference.

use core::cell::RefCell;

use core_nostd::provision::{self, TicketStore, PAGE};
use embassy_rp::flash::{Blocking, Flash, ERASE_SIZE};
use embassy_rp::peripherals::FLASH;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::{Mutex, MutexGuard};

/// Size of the Pico W's flash chip (W25Q16JV).
pub const FLASH_SIZE: usize = 2 * 1024 * 1024;
/// Start of the ticket region, as an offset from the start of flash (see `memory.x`).
pub const TICKETS_OFFSET: u32 = 0x8_0000;
/// Length of the ticket region.
pub const TICKETS_LEN: u32 = 0x18_0000;
/// Bytes per slot: the longest ticket the store takes.
pub const SLOT_SIZE: u32 = 192 * 1024;
/// Number of slots.
pub const SLOTS: u32 = TICKETS_LEN / SLOT_SIZE;

const _: () = {
    assert!(TICKETS_OFFSET as usize + TICKETS_LEN as usize == FLASH_SIZE);
    assert!(TICKETS_OFFSET % ERASE_SIZE as u32 == 0 && SLOT_SIZE % ERASE_SIZE as u32 == 0);
    assert!(SLOT_SIZE % PAGE as u32 == 0);
    assert!(SLOTS * SLOT_SIZE == TICKETS_LEN);
    // minionn-sq: 88 + 16 * 10_340 + 8 * 10 bytes.
    assert!(SLOT_SIZE >= 88 + 16 * 10_340 + 8 * 10);
};

/// The HAL flash driver over the whole chip.
pub type RpFlash = Flash<'static, FLASH, Blocking, FLASH_SIZE>;

/// What went wrong in the ticket store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Slot index `>= SLOTS`.
    NoSuchSlot,
    /// Access past the end of a slot, or a page program not on a page boundary.
    OutOfBounds,
    /// The flash driver failed.
    Flash(embassy_rp::flash::Error),
    /// A burn did not read back as a dead ticket.
    BurnFailed,
}

impl From<embassy_rp::flash::Error> for StoreError {
    fn from(e: embassy_rp::flash::Error) -> Self {
        StoreError::Flash(e)
    }
}

/// The flash side of the store: slot geometry over the HAL driver.
pub struct TicketFlash {
    flash: RpFlash,
}

impl TicketFlash {
    /// Takes the flash driver.
    pub fn new(flash: RpFlash) -> Self {
        TicketFlash { flash }
    }

    /// Flash offset of byte `offset` of `slot`, checking that `len` bytes fit in the slot.
    fn at(slot: u32, offset: u32, len: usize) -> Result<u32, StoreError> {
        if slot >= SLOTS {
            return Err(StoreError::NoSuchSlot);
        }
        let end =
            u32::try_from(len).ok().and_then(|len| offset.checked_add(len)).ok_or(StoreError::OutOfBounds)?;
        if end > SLOT_SIZE {
            return Err(StoreError::OutOfBounds);
        }
        Ok(TICKETS_OFFSET + slot * SLOT_SIZE + offset)
    }

    fn erase(&mut self, slot: u32) -> Result<(), StoreError> {
        let base = Self::at(slot, 0, SLOT_SIZE as usize)?;
        // Sector by sector: the HAL runs each erase with interrupts off, and 4 KiB at a time keeps
        // each such window short (~50 ms) for USB and the radio.
        for sector in (base..base + SLOT_SIZE).step_by(ERASE_SIZE) {
            self.flash.blocking_erase(sector, sector + ERASE_SIZE as u32)?;
        }
        Ok(())
    }

    fn program(&mut self, slot: u32, offset: u32, page: &[u8; PAGE]) -> Result<(), StoreError> {
        if offset % PAGE as u32 != 0 {
            return Err(StoreError::OutOfBounds);
        }
        let at = Self::at(slot, offset, PAGE)?;
        self.flash.blocking_write(at, page)?;
        Ok(())
    }

    fn read(&mut self, slot: u32, offset: u32, buf: &mut [u8]) -> Result<(), StoreError> {
        let at = Self::at(slot, offset, buf.len())?;
        self.flash.blocking_read(at, buf)?;
        Ok(())
    }

    /// Clears the first four bytes (the ticket magic): bits only go from 1 to 0, no erase.
    fn burn(&mut self, slot: u32) -> Result<(), StoreError> {
        let at = Self::at(slot, 0, 4)?;
        self.flash.blocking_write(at, &[0; 4])?;
        let mut magic = [0xFF; 4];
        self.flash.blocking_read(at, &mut magic)?;
        if magic == [0; 4] {
            Ok(())
        } else {
            Err(StoreError::BurnFailed)
        }
    }
}

/// The store shared by the provisioning task and the inference loop (see the module docs).
pub struct Store {
    flash: RefCell<TicketFlash>,
    session: Mutex<NoopRawMutex, ()>,
}

impl Store {
    /// Wraps the flash store.
    pub fn new(flash: TicketFlash) -> Self {
        Store { flash: RefCell::new(flash), session: Mutex::new(()) }
    }

    /// Exclusive use of the store for a provisioning transfer or one inference.
    pub async fn session(&self) -> MutexGuard<'_, NoopRawMutex, ()> {
        self.session.lock().await
    }

    /// A handle implementing core-nostd's `TicketStore`.
    pub fn handle(&'static self) -> StoreHandle {
        StoreHandle(self)
    }

    /// Number of live tickets.
    pub fn live_count(&'static self) -> u32 {
        provision::live_tickets(&mut self.handle())
    }

    fn with<R>(&self, f: impl FnOnce(&mut TicketFlash) -> R) -> R {
        f(&mut self.flash.borrow_mut())
    }
}

/// A cheap, copyable reference to the [`Store`]; what core-nostd's provisioning receiver and
/// `SlotBody` take (`&mut S`).
#[derive(Clone, Copy)]
pub struct StoreHandle(&'static Store);

impl TicketStore for StoreHandle {
    type Error = StoreError;

    fn slots(&self) -> u32 {
        SLOTS
    }

    fn slot_len(&self) -> u32 {
        SLOT_SIZE
    }

    fn erase(&mut self, slot: u32) -> Result<(), StoreError> {
        self.0.with(|f| f.erase(slot))
    }

    fn program(&mut self, slot: u32, offset: u32, page: &[u8; PAGE]) -> Result<(), StoreError> {
        self.0.with(|f| f.program(slot, offset, page))
    }

    fn read(&mut self, slot: u32, offset: u32, buf: &mut [u8]) -> Result<(), StoreError> {
        self.0.with(|f| f.read(slot, offset, buf))
    }

    fn burn(&mut self, slot: u32) -> Result<(), StoreError> {
        self.0.with(|f| f.burn(slot))
    }
}
