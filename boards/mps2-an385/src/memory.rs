//! What the client costs in memory: static RAM from the linker's symbols, and the stack's
//! high-water mark by painting the free stack at boot and finding the deepest overwritten word.

const PAINT: u32 = 0xA5C3_5A3C;
/// Bytes below the current stack pointer left unpainted (the painting function's own frame).
const MARGIN: usize = 256;

extern "C" {
    static __sdata: u32;
    static __sheap: u32;
    static _stack_start: u32;
    static __sidata: u32;
    static __edata: u32;
}

fn addr<T>(p: *const T) -> usize {
    p as usize
}

/// `.data` + `.bss` (+ `.uninit`): RAM the program reserves statically.
pub fn static_ram() -> usize {
    addr(&raw const __sheap) - addr(&raw const __sdata)
}

/// Flash the program occupies: code, constants (the sample images included) and `.data`'s
/// initial values.
pub fn flash_used() -> usize {
    addr(&raw const __sidata) + (addr(&raw const __edata) - addr(&raw const __sdata))
}

/// Fill the free stack with a pattern. Call first thing in `main`.
#[inline(never)]
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = addr(&raw const __sheap);
    while p + MARGIN < sp {
        // SAFETY: between the end of the statics and (below) the live stack: memory nothing uses.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Deepest stack use so far, in bytes (from the top of RAM down to the lowest repainted word).
pub fn stack_peak() -> usize {
    let top = addr(&raw const _stack_start);
    let mut p = addr(&raw const __sheap);
    // SAFETY: reading the painted region; every word in it is initialised.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    top - p
}
