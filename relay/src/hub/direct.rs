//! What the router needs to write a line straight to an idle connection's
//! socket, kept dense.
//!
//! A line written at once to 1,000 subscribers touches, per subscriber,
//! only its subscription entry (the index's lists are contiguous) and its
//! connection's [`Slot`]: 64 bytes in a chunk of 64 slots (one page), so a
//! fan-out to 1,000 connections walks 16 pages instead of 1,000 queues
//! scattered over the heap, each a TLB and cache miss right after the
//! previous subscriber's `send` evicted the router's data
//! (BENCHMARKS.md, "Paced fan-out, fourth step").
//!
//! Invariants (the queue and its writer keep them, see `outbound.rs`):
//! - `busy` is `true` whenever the connection's writer has, or may have,
//!   something to write (anything queued, a batch being written, the rest
//!   of a half-written frame): only then may the writer or the reader's
//!   automatic replies write to the socket, and the router writes only
//!   when `busy` is `false`, under the slot's lock, so frames never
//!   interleave.
//! - Only the writer clears `busy`, holding its queue's lock and the
//!   slot's, when it found nothing to write; every producer sets it (after
//!   queuing) before waking the writer. `busy` is an atomic beside the
//!   slot's lock, so a producer that finds it set (the common case under
//!   load) only reads it; the writer takes the slot's lock before it
//!   writes anything, so it never starts while a direct write is in
//!   flight. Lock order: queue, then slot.
//! - A slot is claimed by one [`Outbound`](super::outbound::Outbound) and
//!   goes back to the pool when that queue is dropped; subscriptions hold
//!   the queue too, so no subscription can outlive its slot's claim.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use super::outbound::{Live, frame_header, subscription_prefix};

/// Slots per chunk: 64 × 64 bytes, one page.
const CHUNK: usize = 64;

/// A line arriving this long after the previous one for the same
/// connection, with nothing queued and the writer idle, is written at once
/// by the router (one `send`, no task wake-up); closer lines are queued
/// and the writer coalesces them into one write.
pub const DIRECT_GAP: Duration = Duration::from_millis(1);

/// Largest frame a direct write copies into one buffer (see
/// [`DirectRef::try_write`]).
const SMALL_FRAME: usize = 4096;

thread_local! {
    /// The router thread's buffer for one small frame.
    static FRAME: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(SMALL_FRAME));
}

/// One connection's direct-write state.
#[derive(Debug, Default)]
pub(super) struct SlotState {
    /// The connection's socket (plain TCP only; a duplicate descriptor).
    socket: Option<std::net::TcpStream>,
    /// When a line that could have been written at once was last routed.
    last_push: Option<Instant>,
    /// The rest of a frame a direct write left half written: the writer
    /// writes it before anything else. Empty: none.
    pub(super) raw: Vec<u8>,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    state: Mutex<SlotState>,
    /// The writer has or may have something to write (see the module's
    /// invariants). A released slot is busy.
    busy: AtomicBool,
}

#[derive(Debug)]
struct Chunk {
    slots: [Slot; CHUNK],
    /// Where its slots go back to.
    pool: std::sync::Weak<DirectSlots>,
}

/// The pool the relay's connections take their slots from.
#[derive(Debug, Default)]
pub struct DirectSlots {
    pool: Mutex<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    /// Free slots, newest chunk last: taken from the end, so slots are
    /// reused before a new chunk is made.
    free: Vec<(Arc<Chunk>, u8)>,
    /// Chunks made so far.
    chunks: usize,
}

impl DirectSlots {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A slot for a connection whose socket the router may write to.
    pub fn claim(self: &Arc<Self>, socket: std::net::TcpStream) -> DirectClaim {
        let (chunk, index) = {
            let mut pool = self.pool.lock();
            loop {
                if let Some(free) = pool.free.pop() {
                    break free;
                }
                let chunk = Arc::new(Chunk {
                    slots: std::array::from_fn(|_| Slot::default()),
                    pool: Arc::downgrade(self),
                });
                pool.free
                    .extend((0..CHUNK as u8).rev().map(|i| (chunk.clone(), i)));
                pool.chunks += 1;
            }
        };
        // A free slot is as `release` left it (or new): only the socket to
        // put in.
        let slot = DirectRef { chunk, index };
        slot.lock().socket = Some(socket);
        slot.slot().busy.store(false, Ordering::Release);
        DirectClaim { slot }
    }

    /// Slots made so far (claimed or free).
    #[cfg(test)]
    fn made(&self) -> usize {
        self.pool.lock().chunks * CHUNK
    }
}

/// A connection's claim on its slot: given back when dropped.
#[derive(Debug)]
pub struct DirectClaim {
    slot: DirectRef,
}

impl DirectClaim {
    pub fn slot(&self) -> &DirectRef {
        &self.slot
    }
}

impl Drop for DirectClaim {
    fn drop(&mut self) {
        self.slot.close_socket();
        *self.slot.lock() = SlotState::default();
        if let Some(pool) = self.slot.chunk.pool.upgrade() {
            let free = (self.slot.chunk.clone(), self.slot.index);
            pool.pool.lock().free.push(free);
        }
    }
}

/// Where a connection's slot is: what a subscription entry holds (16
/// bytes, no pointer to the connection's queue followed).
#[derive(Debug, Clone)]
pub struct DirectRef {
    chunk: Arc<Chunk>,
    index: u8,
}

/// What a direct write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// The whole frame is in the socket.
    Written,
    /// Part of it is: the rest is in the slot; wake the writer.
    Begun,
    /// Not written: queue it.
    Queue,
}

impl DirectRef {
    fn slot(&self) -> &Slot {
        // `index` < CHUNK by construction.
        &self.chunk.slots[self.index as usize % CHUNK]
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.slot().state.lock()
    }

    /// Whether the writer has or may have something to write.
    pub(super) fn busy(&self) -> bool {
        self.slot().busy.load(Ordering::Acquire)
    }

    /// Only the writer, holding its queue's lock and this slot's (`_held`),
    /// finding nothing to write.
    pub(super) fn set_idle(&self, _held: &MutexGuard<'_, SlotState>) {
        self.slot().busy.store(false, Ordering::Release);
    }

    /// Asks the CPU to fetch this slot: the router calls it for the next
    /// subscriber while it writes to the current one.
    #[inline(always)]
    pub fn prefetch(&self) {
        crate::prefetch::read_all(self.slot());
    }

    /// Marks the writer busy (a producer queued something for it): a read
    /// only, when it already is.
    pub(super) fn set_busy(&self) {
        let busy = &self.slot().busy;
        if !busy.load(Ordering::Acquire) {
            busy.store(true, Ordering::Release);
        }
    }

    /// The connection is ending: no more direct writes, and the duplicate
    /// descriptor goes (the socket closes with the connection).
    pub fn close_socket(&self) {
        let mut state = self.lock();
        state.socket = None;
        self.slot().busy.store(true, Ordering::Release);
    }

    /// Writes `line` for `subscription` to the socket at once when the
    /// connection is idle: the writer not busy and the previous line at
    /// least [`DIRECT_GAP`] ago. A frame the socket takes only in part
    /// leaves its rest in the slot for the writer, so frames never
    /// interleave.
    pub fn try_write(&self, subscription: u64, line: Live<'_>) -> Direct {
        use std::io::Write;
        let mut state = self.lock();
        // The item's ingest time stands for "now": one clock read per
        // routing pass, not per subscriber.
        let now = line.ingested_at;
        let last = state.last_push.replace(now);
        let idle =
            !self.busy() && last.is_none_or(|at| now.saturating_duration_since(at) >= DIRECT_GAP);
        let socket = match &state.socket {
            Some(socket) if idle => socket,
            _ => return Direct::Queue,
        };
        let mut prefix = [0u8; 64];
        let prefix_len = if subscription == 0 {
            0
        } else {
            subscription_prefix(subscription, &mut prefix)
        };
        // As `Outgoing::to_text`: the prefix replaces the body's opening
        // brace.
        let rest = match line.body.strip_prefix(b"{") {
            Some(rest) if prefix_len > 0 => rest,
            _ => &line.body[..],
        };
        let mut header = [0u8; 10];
        let header_len = frame_header(prefix_len + rest.len(), &mut header);
        let parts = [&header[..header_len], &prefix[..prefix_len], rest];
        let total = header_len + prefix_len + rest.len();
        let written = if total <= SMALL_FRAME {
            // One `send` of a copy: a small frame costs less copied here
            // than gathered by `writev`, whose VFS path (the descriptor's
            // position lock, the iovec import) costs the kernel more
            // (BENCHMARKS.md, "Paced fan-out").
            FRAME.with_borrow_mut(|frame| {
                frame.clear();
                for part in parts {
                    frame.extend_from_slice(part);
                }
                (&*socket).write(frame)
            })
        } else {
            (&*socket).write_vectored(&parts.map(std::io::IoSlice::new))
        };
        match written {
            Ok(n) if n == total => Direct::Written,
            Ok(n) if n > 0 => {
                let mut frame = Vec::with_capacity(total);
                for part in parts {
                    frame.extend_from_slice(part);
                }
                frame.drain(..n);
                state.raw = frame;
                self.slot().busy.store(true, Ordering::Release);
                Direct::Begun
            }
            // Would block, or failed: the writer finds out and ends.
            _ => Direct::Queue,
        }
    }

    /// Writes `raw` (the rest of a frame a direct write began), waiting for
    /// the socket as needed. `false`: the socket failed or is gone.
    pub async fn write_raw(&self, mut raw: &[u8]) -> bool {
        use std::io::Write;
        while !raw.is_empty() {
            // Non-blocking: the lock is held for one `write` only.
            let written = match &self.lock().socket {
                Some(socket) => (&*socket).write(raw),
                None => return false,
            };
            match written {
                Ok(0) => return false,
                Ok(n) => raw = &raw[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> std::net::TcpStream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        drop(listener);
        client
    }

    #[test]
    fn slots_are_one_cache_line_and_reused_before_a_new_chunk() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(std::mem::size_of::<[Slot; CHUNK]>(), 4096);
        let pool = DirectSlots::new();
        let claims: Vec<_> = (0..CHUNK + 1).map(|_| pool.claim(socket())).collect();
        assert_eq!(pool.made(), 2 * CHUNK, "a second chunk for the 65th");
        // Two connections never share a slot.
        let mut places: Vec<_> = claims
            .iter()
            .map(|c| std::ptr::from_ref(c.slot().slot()) as usize)
            .collect();
        places.sort();
        places.dedup();
        assert_eq!(places.len(), CHUNK + 1);
        drop(claims);
        let again = pool.claim(socket());
        assert_eq!(pool.made(), 2 * CHUNK, "freed slots are reused");
        assert!(!again.slot().busy(), "a claimed slot starts idle");
        assert!(again.slot().lock().socket.is_some());
    }

    #[test]
    fn a_released_slot_holds_no_socket_and_takes_no_direct_write() {
        let pool = DirectSlots::new();
        let claim = pool.claim(socket());
        let slot = claim.slot().clone();
        drop(claim);
        assert!(slot.lock().socket.is_none());
        let body = bytes::Bytes::from_static(br#"{"type":"log"}"#);
        let line = Live {
            body: &body,
            ingested_at: Instant::now(),
            alone: true,
        };
        assert_eq!(slot.try_write(1, line), Direct::Queue);
    }
}
