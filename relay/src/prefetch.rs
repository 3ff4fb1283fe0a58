//! Cache prefetch hints for the fan-out loop (`hub::each_fetching_ahead`).
//!
//! The one `unsafe` in the relay: `_mm_prefetch` is an intrinsic, and Rust
//! asks for `unsafe` to call any intrinsic from code not compiled for its
//! target feature (SSE, which every x86_64 CPU has). A prefetch is only a
//! hint: it never faults, even on an unmapped address, and reads or writes
//! nothing the program can see. Elsewhere it does nothing.

/// Most cache lines of one value fetched ahead.
const MAX_LINES: usize = 4;

/// Hints that all of `value` (up to four cache lines) will be read soon.
#[inline(always)]
pub fn read_all<T>(value: &T) {
    lines(value, std::mem::size_of::<T>().div_ceil(64).min(MAX_LINES));
}

#[inline(always)]
#[allow(unsafe_code)]
fn lines<T>(value: &T, count: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let base = (value as *const T).cast::<i8>();
        for line in 0..count {
            // SAFETY: SSE is part of x86_64; a prefetch never faults and
            // has no visible effect. `wrapping_add` computes the address
            // without asserting it is in bounds.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (value, count);
}
