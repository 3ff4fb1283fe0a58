//! The bounded outbound queue of one WebSocket connection.
//!
//! Producers (the hub routing ingested data, the connection's own replies)
//! push; the connection's writer drains. The policy when a reader is slow:
//!
//! - everything queued counts against a byte budget
//!   ([`OutboundLimits::max_bytes`], body bytes plus [`MESSAGE_OVERHEAD`]
//!   each) as well as a count: a client can never make the relay hold more
//!   for it than that (plus the one batch its writer is writing);
//! - replies, deployment and status messages always enter: they are rare and
//!   bounded by the client's own (rate-limited) requests and by deployments;
//! - metrics are conflated: one slot per (subscription, host, application),
//!   the newest sample replaces the queued one;
//! - log lines, live or replayed (`tail`, a deployment's lines), beyond the
//!   count or the byte budget are dropped and counted per subscription; once
//!   the writer catches up the client receives a `dropped` message with the
//!   count;
//! - a queue that stays full, or a writer that cannot finish writing, for
//!   [`OutboundLimits::stall_timeout`] marks the reader as stalled, and the
//!   connection closes it with code [`CLOSE_SLOW_READER`], whatever the
//!   client sends meanwhile.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::direct::{Direct, DirectClaim, DirectRef};
use crate::telemetry::Stats;

/// Close code for a reader that stayed too slow (private-use range).
pub const CLOSE_SLOW_READER: u16 = 4008;

#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// Most log messages queued for one connection.
    pub max_queued: usize,
    /// Most bytes queued for one connection.
    pub max_bytes: usize,
    /// Most distinct conflated metric series queued for one connection.
    pub max_metric_series: usize,
    /// How long the queue may stay full before the reader is called stalled.
    pub stall_timeout: Duration,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        OutboundLimits {
            max_queued: 8192,
            max_bytes: 4 * 1024 * 1024,
            max_metric_series: 4096,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// What a queued message costs besides its body (the queue entry, the
/// subscription prefix written with it).
pub const MESSAGE_OVERHEAD: usize = 64;

/// One message waiting to be written.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The subscription it matched; `0` for replies that carry no
    /// `subscriptionId` of their own.
    pub subscription: u64,
    /// The JSON object, without `subscriptionId`, shared by every
    /// subscriber it was routed to.
    pub body: Bytes,
    /// When the item entered the relay, for latency figures.
    pub ingested_at: Option<Instant>,
}

impl Outgoing {
    /// What it counts against the byte budget.
    pub fn cost(&self) -> usize {
        self.body.len() + MESSAGE_OVERHEAD
    }

    pub fn reply(body: Bytes) -> Self {
        Outgoing {
            subscription: 0,
            body,
            ingested_at: None,
        }
    }

    /// The text frame for this subscriber: `{"subscriptionId":"sub-N",` and
    /// the shared body after its opening brace. One allocation and a copy,
    /// no re-serialization.
    pub fn to_text(&self) -> String {
        let body = std::str::from_utf8(&self.body).unwrap_or("{}");
        if self.subscription == 0 {
            return body.to_owned();
        }
        let rest = body.strip_prefix('{').unwrap_or(body);
        let mut text = String::with_capacity(body.len() + 40);
        // Written in place: no temporary string per message and subscriber.
        use std::fmt::Write;
        let _ = write!(text, "{{\"subscriptionId\":\"sub-{}\",", self.subscription);
        text.push_str(rest);
        text
    }
}

/// A live line on its way to its subscribers: borrowed, so that a line
/// written at once costs no copy and no reference count per subscriber
/// (the shared body's count is one contended cache line when a fan-out
/// runs on several threads).
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    /// The JSON object, without `subscriptionId`.
    pub body: &'a Bytes,
    pub ingested_at: Instant,
    /// The only item of its batch: it may be written at once.
    pub alone: bool,
}

impl Live<'_> {
    /// The line as a queued message of `subscription`.
    pub fn to_outgoing(self, subscription: u64) -> Outgoing {
        Outgoing {
            subscription,
            body: self.body.clone(),
            ingested_at: Some(self.ingested_at),
        }
    }
}

pub fn subscription_name(id: u64) -> String {
    format!("sub-{id}")
}

/// Identifies a conflated metric series within a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub subscription: u64,
    pub host: Arc<str>,
    pub application: Arc<str>,
}

/// What the writer takes in one go.
#[derive(Debug, Default)]
pub struct Drained {
    pub messages: Vec<Outgoing>,
    /// (subscription, count) of log messages dropped since the last drain.
    pub dropped: Vec<(u64, u64)>,
    pub ping: bool,
    pub close: Option<(u16, String)>,
    /// Bytes of a frame a direct write began: written first, as they are.
    pub raw: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    metrics: HashMap<SeriesKey, Outgoing>,
    dropped: Vec<(u64, u64)>,
    ping: bool,
    /// Boxed: rare, and one pointer in every connection's state.
    close: Option<Box<(u16, String)>>,
    full_since: Option<Instant>,
    /// Bytes queued (bodies plus overhead).
    bytes: usize,
    /// Of those, what is charged to the client address's budget.
    charged: usize,
    /// The last stall check saw the writer busy, with this many batches
    /// written, at this time (the writer never reads the clock).
    busy_seen: Option<(u64, Instant)>,
}

/// The WebSocket text frame header of a server frame (never masked) for a
/// payload of `len` bytes; returns the header bytes used.
pub fn frame_header(len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x81;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Writes `{"subscriptionId":"sub-N",` into `out`; returns its length.
pub(super) fn subscription_prefix(id: u64, out: &mut [u8; 64]) -> usize {
    const HEAD: &[u8] = b"{\"subscriptionId\":\"sub-";
    out[..HEAD.len()].copy_from_slice(HEAD);
    let mut digits = [0u8; 20];
    let mut n = id;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = HEAD.len();
    out[len..len + digits.len() - i].copy_from_slice(&digits[i..]);
    len += digits.len() - i;
    out[len..len + 2].copy_from_slice(b"\",");
    len + 2
}

/// What a connection may queue before it draws on its address's budget.
pub const ADDRESS_FREE_BYTES: usize = 64 * 1024;

/// Bytes queued by all connections of one client address, against
/// `max`: one client cannot multiply the per-connection budget by opening
/// many connections.
#[derive(Debug)]
pub struct AddressBudget {
    pub queued: std::sync::atomic::AtomicUsize,
    pub max: usize,
}

impl AddressBudget {
    fn would_exceed(&self, cost: usize) -> bool {
        self.queued.load(std::sync::atomic::Ordering::Relaxed) + cost > self.max
    }
    fn add(&self, cost: usize) {
        self.queued
            .fetch_add(cost, std::sync::atomic::Ordering::Relaxed);
    }
    fn sub(&self, cost: usize) {
        self.queued
            .fetch_sub(cost, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    /// The writer holds a batch it has not finished writing.
    writing: std::sync::atomic::AtomicBool,
    /// Batches the writer finished.
    batches_written: std::sync::atomic::AtomicU64,
    notify: Notify,
    limits: OutboundLimits,
    stats: Arc<Stats>,
    address: Option<Arc<AddressBudget>>,
    /// The connection's slot for direct writes (plain TCP only).
    direct: Option<DirectClaim>,
}

impl Outbound {
    pub fn new(limits: OutboundLimits, stats: Arc<Stats>) -> Self {
        Outbound {
            state: Mutex::new(State::default()),
            writing: Default::default(),
            batches_written: Default::default(),
            notify: Notify::new(),
            limits,
            stats,
            address: None,
            direct: None,
        }
    }

    /// Lets the router write to this connection's socket directly (plain
    /// TCP; `claim` holds a duplicate of the connection's descriptor).
    pub fn with_direct(mut self, claim: DirectClaim) -> Self {
        self.direct = Some(claim);
        self
    }

    /// Where the router writes to this connection directly, if it may.
    pub fn direct(&self) -> Option<&DirectRef> {
        self.direct.as_ref().map(DirectClaim::slot)
    }

    /// Wakes the writer after something was queued for it: first marks it
    /// busy, so the router stops writing to the socket directly.
    fn wake(&self) {
        if let Some(direct) = &self.direct {
            direct.slot().set_busy();
        }
        self.notify.notify_one();
    }

    /// Wakes the writer for the rest of a frame the router began.
    pub fn wake_for_raw(&self) {
        self.notify.notify_one();
    }

    /// Also counts what is queued against the client address's budget.
    pub fn with_address_budget(mut self, budget: Arc<AddressBudget>) -> Self {
        self.address = Some(budget);
        self
    }

    /// Whether queuing `cost` more would take the address over its
    /// budget. A connection's first [`ADDRESS_FREE_BYTES`] are its own: the
    /// common case (a queue that drains at once) never touches the
    /// address's shared counter.
    fn over_address_budget(&self, state: &State, cost: usize) -> bool {
        state.bytes + cost > ADDRESS_FREE_BYTES
            && self.address.as_ref().is_some_and(|a| a.would_exceed(cost))
    }

    fn charge(&self, state: &mut State, cost: usize) {
        state.bytes += cost;
        if let Some(address) = &self.address {
            let over = state.bytes.saturating_sub(ADDRESS_FREE_BYTES);
            if over > state.charged {
                address.add(over - state.charged);
                state.charged = over;
            }
        }
    }

    /// Gives back what this queue charged to its address.
    fn discharge(&self, state: &mut State) {
        if let Some(address) = &self.address
            && state.charged > 0
        {
            address.sub(state.charged);
            state.charged = 0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock()
    }

    /// A reply or a message that must not be dropped (deployment, status).
    ///
    /// Never dropped, but counted against the bounds: a client that keeps
    /// asking without reading fills its queue and is closed as stalled.
    pub fn push_reply(&self, message: Outgoing) {
        let mut state = self.lock();
        let cost = message.cost();
        self.charge(&mut state, cost);
        if state.queue.len() >= self.limits.max_queued
            || state.bytes > self.limits.max_bytes
            || self.over_address_budget(&state, 0)
        {
            state.full_since.get_or_insert_with(Instant::now);
        }
        state.queue.push_back(message);
        drop(state);
        self.wake();
    }

    /// A log line, live or replayed: dropped and counted when the queue is
    /// full (in count or in bytes).
    pub fn push_log(&self, message: Outgoing) {
        let state = self.lock();
        self.queue_log(state, message);
    }

    /// A live line of `subscription`: as [`Outbound::push_log`], but when
    /// `alone` (the only item of its batch: an agent's line at a quiet
    /// moment) it may be written to an idle socket at once (see
    /// [`DIRECT_GAP`]). Returns `true` when it was: the caller counts it
    /// and records its latency, once per routing pass for all such
    /// deliveries (`Stats::record_direct`).
    pub fn push_live(&self, subscription: u64, line: Live<'_>) -> bool {
        self.push_live_via(self.direct(), subscription, line)
    }

    /// As [`Outbound::push_live`], through `direct` (this connection's
    /// slot, as a subscription entry holds it: the router reaches the slot
    /// without reading this queue).
    pub fn push_live_via(
        &self,
        direct: Option<&DirectRef>,
        subscription: u64,
        line: Live<'_>,
    ) -> bool {
        if line.alone
            && let Some(direct) = direct
        {
            match direct.try_write(subscription, line) {
                Direct::Written => return true,
                Direct::Begun => {
                    self.wake_for_raw();
                    return true;
                }
                Direct::Queue => {}
            }
        }
        self.queue_log(self.lock(), line.to_outgoing(subscription));
        false
    }

    fn queue_log(&self, mut state: MutexGuard<'_, State>, message: Outgoing) {
        let cost = message.cost();
        if state.queue.len() >= self.limits.max_queued
            || state.bytes + cost > self.limits.max_bytes
            || self.over_address_budget(&state, cost)
        {
            state.full_since.get_or_insert_with(Instant::now);
            let subscription = message.subscription;
            match state.dropped.iter_mut().find(|(id, _)| *id == subscription) {
                Some((_, count)) => *count += 1,
                None => state.dropped.push((subscription, 1)),
            }
            drop(state);
            self.stats.messages_dropped.inc();
            return;
        }
        self.charge(&mut state, cost);
        state.queue.push_back(message);
        drop(state);
        self.wake();
    }

    /// The connection is ending: no more direct writes, and the duplicate
    /// descriptor goes (the socket closes with the connection).
    pub fn clear_direct(&self) {
        if let Some(direct) = self.direct() {
            direct.close_socket();
        }
    }

    /// Writes the rest of a frame a direct write began (see
    /// [`Drained::raw`]). `false`: the socket failed.
    pub async fn write_raw(&self, raw: &[u8]) -> bool {
        match self.direct() {
            Some(direct) => direct.write_raw(raw).await,
            None => false,
        }
    }

    /// Counts `count` lines of `subscription` as dropped (the client is
    /// told with a `dropped` message).
    pub fn count_dropped(&self, subscription: u64, count: u64) {
        if count == 0 {
            return;
        }
        let mut state = self.lock();
        match state.dropped.iter_mut().find(|(id, _)| *id == subscription) {
            Some((_, n)) => *n += count,
            None => state.dropped.push((subscription, count)),
        }
        drop(state);
        self.stats.messages_dropped.inc_by(count);
        self.wake();
    }

    /// A metric sample: replaces a queued sample of the same series.
    pub fn push_metric(&self, key: SeriesKey, message: Outgoing) {
        let mut state = self.lock();
        let cost = message.cost();
        if let Some(slot) = state.metrics.get_mut(&key) {
            let old = slot.cost();
            *slot = message;
            state.bytes = state.bytes + cost - old;
            return;
        }
        if state.metrics.len() >= self.limits.max_metric_series
            || state.bytes + cost > self.limits.max_bytes
            || self.over_address_budget(&state, cost)
        {
            drop(state);
            self.stats.messages_dropped.inc();
            return;
        }
        self.charge(&mut state, cost);
        state.metrics.insert(key, message);
        drop(state);
        self.wake();
    }

    pub fn push_ping(&self) {
        self.lock().ping = true;
        self.wake();
    }

    /// Asks the writer to send a close frame after what is queued.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(Box::new((code, reason.into())));
        }
        drop(state);
        self.wake();
    }

    /// Whether the queue has been full, or the writer stuck on one batch,
    /// for longer than the stall timeout. Called periodically: the writer
    /// is stuck when it was busy at an earlier call and has finished no
    /// batch since.
    pub fn is_stalled(&self, now: Instant) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let mut state = self.lock();
        let too_long =
            |since: Instant| now.saturating_duration_since(since) >= self.limits.stall_timeout;
        let written = self.batches_written.load(Relaxed);
        let busy_since = if self.writing.load(Relaxed) {
            match state.busy_seen {
                Some((seen, since)) if seen == written => Some(since),
                _ => {
                    state.busy_seen = Some((written, now));
                    Some(now)
                }
            }
        } else {
            state.busy_seen = None;
            None
        };
        state.full_since.is_some_and(too_long) || busy_since.is_some_and(too_long)
    }

    /// Whether the queue is at most half full (in count and bytes): a
    /// replay waits for this before it queues more.
    pub fn has_room(&self) -> bool {
        let state = self.lock();
        state.queue.len() <= self.limits.max_queued / 2 && state.bytes <= self.limits.max_bytes / 2
    }

    /// The writer finished writing what it took (no lock, no clock: this
    /// runs once per batch written).
    pub fn written(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.batches_written.fetch_add(1, Relaxed);
        self.writing.store(false, Relaxed);
    }

    /// Asks the CPU to fetch this queue's state: the router calls it for
    /// the next subscriber while it writes to the current one.
    #[inline(always)]
    pub fn prefetch(&self) {
        crate::prefetch::read_all(self);
    }

    /// Waits until something is queued, then takes all of it.
    pub async fn next(&self) -> Drained {
        loop {
            {
                let mut state = self.lock();
                let queued = !state.queue.is_empty()
                    || !state.metrics.is_empty()
                    || !state.dropped.is_empty()
                    || state.ping
                    || state.close.is_some();
                // Under the queue's lock (the order: queue, then slot): the
                // rest of a frame the router began, or, with nothing to
                // do, the router may write directly again.
                let raw = self.direct().and_then(|direct| {
                    let mut slot = direct.lock();
                    if !queued && slot.raw.is_empty() {
                        direct.set_idle(&slot);
                    }
                    Some(std::mem::take(&mut slot.raw)).filter(|raw| !raw.is_empty())
                });
                if queued || raw.is_some() {
                    let mut messages: Vec<Outgoing> = state.queue.drain(..).collect();
                    messages.extend(state.metrics.drain().map(|(_, m)| m));
                    if state.queue.capacity() > self.limits.max_queued.min(256) {
                        state.queue.shrink_to(64);
                    }
                    state.full_since = None;
                    self.discharge(&mut state);
                    state.bytes = 0;
                    self.writing
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return Drained {
                        messages,
                        dropped: std::mem::take(&mut state.dropped),
                        ping: std::mem::take(&mut state.ping),
                        close: state.close.take().map(|close| *close),
                        raw,
                    };
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        let charged = std::mem::take(&mut state.charged);
        if let Some(address) = &self.address {
            address.sub(charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(max_queued: usize) -> Outbound {
        Outbound::new(
            OutboundLimits {
                max_queued,
                max_bytes: 1 << 20,
                max_metric_series: 2,
                stall_timeout: Duration::from_millis(0),
            },
            Arc::new(Stats::new()),
        )
    }

    fn message(subscription: u64, body: &str) -> Outgoing {
        Outgoing {
            subscription,
            body: Bytes::copy_from_slice(body.as_bytes()),
            ingested_at: None,
        }
    }

    /// A connected pair of plain sockets: the relay's side (non-blocking,
    /// as tokio leaves it) and the client's.
    fn live(queue: &Outbound, message: &Outgoing, alone: bool) -> bool {
        let line = Live {
            body: &message.body,
            ingested_at: message.ingested_at.unwrap_or_else(Instant::now),
            alone,
        };
        queue.push_live(message.subscription, line)
    }

    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (relay, _) = listener.accept().unwrap();
        relay.set_nonblocking(true).unwrap();
        (relay, client)
    }

    /// Reads one unmasked server text frame from `client`.
    fn read_frame(client: &mut std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;
        let mut head = [0u8; 2];
        client.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0x81, "FIN + text");
        let len = match head[1] {
            126 => {
                let mut n = [0u8; 2];
                client.read_exact(&mut n).unwrap();
                u16::from_be_bytes(n) as usize
            }
            127 => {
                let mut n = [0u8; 8];
                client.read_exact(&mut n).unwrap();
                u64::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).unwrap();
        payload
    }

    /// A queue whose router may write to `relay` directly.
    fn direct_outbound(relay: std::net::TcpStream) -> Outbound {
        outbound(10).with_direct(super::super::direct::DirectSlots::new().claim(relay))
    }

    /// Whether the writer, polled once, finds something to write.
    fn writer_takes(queue: &Outbound) -> Option<Drained> {
        futures_util::FutureExt::now_or_never(queue.next())
    }

    #[test]
    fn an_idle_connection_gets_its_line_written_at_once_as_one_frame() {
        use super::super::direct::DIRECT_GAP;
        let (relay, mut client) = socket_pair();
        let queue = direct_outbound(relay);
        let line = message(42, r#"{"type":"log","message":"hi"}"#);
        // One of several items of a batch: queued, they go in one write.
        assert!(!live(&queue, &line, false));
        std::thread::sleep(DIRECT_GAP * 2);
        assert!(
            !live(&queue, &line, true),
            "the writer has work: queued behind it"
        );
        let drained = writer_takes(&queue).expect("two lines queued");
        assert_eq!(drained.messages.len(), 2);
        std::thread::sleep(DIRECT_GAP * 2);
        assert!(
            !live(&queue, &line, true),
            "the writer is still writing its batch: queued"
        );
        queue.written();
        assert_eq!(writer_takes(&queue).unwrap().messages.len(), 1);
        queue.written();
        // The writer found nothing more: idle, the router may write.
        assert!(writer_takes(&queue).is_none());
        std::thread::sleep(DIRECT_GAP * 2);
        assert!(live(&queue, &line, true), "written at once");
        assert_eq!(read_frame(&mut client), line.to_text().into_bytes());
        // After a pause, again at once; a line right after it is queued
        // for the writer (it coalesces).
        std::thread::sleep(DIRECT_GAP * 2);
        let mut soon = line.clone();
        soon.ingested_at = Some(Instant::now());
        let sooner = soon.clone();
        assert!(live(&queue, &soon, true));
        assert_eq!(read_frame(&mut client), line.to_text().into_bytes());
        assert!(!live(&queue, &sooner, true), "within DIRECT_GAP: queued");
        // A reply queued meanwhile keeps the router off the socket.
        assert_eq!(writer_takes(&queue).unwrap().messages.len(), 1);
        queue.written();
        assert!(writer_takes(&queue).is_none());
        queue.push_reply(Outgoing::reply(Bytes::from_static(b"{}")));
        std::thread::sleep(DIRECT_GAP * 2);
        assert!(!live(&queue, &line, true), "a reply is queued: queued");
        assert_eq!(writer_takes(&queue).unwrap().messages.len(), 2);
        queue.written();
        assert!(writer_takes(&queue).is_none());
        queue.clear_direct();
        std::thread::sleep(DIRECT_GAP * 2);
        assert!(!live(&queue, &message(42, "{}"), true), "no socket: queued");
    }

    #[tokio::test]
    async fn a_frame_the_socket_takes_in_part_is_finished_before_anything_else() {
        let (relay, mut client) = socket_pair();
        let queue = direct_outbound(relay);
        // Far more than the socket buffers take while nobody reads.
        let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(8 << 20));
        let line = message(7, &big);
        assert!(live(&queue, &line, true), "begun at once");
        assert!(
            !live(&queue, &message(7, r#"{"n":2}"#), true),
            "then queued"
        );
        let reader = std::thread::spawn(move || {
            let first = read_frame(&mut client);
            let second = read_frame(&mut client);
            (first, second)
        });
        let drained = queue.next().await;
        let raw = drained.raw.expect("the rest of the big frame");
        assert!(queue.write_raw(&raw).await);
        assert_eq!(drained.messages.len(), 1);
        // What the writer sends next, framed as tungstenite would.
        let text = drained.messages[0].to_text();
        let mut header = [0u8; 10];
        let n = frame_header(text.len(), &mut header);
        let mut frame = header[..n].to_vec();
        frame.extend_from_slice(text.as_bytes());
        assert!(queue.write_raw(&frame).await);
        let (first, second) = reader.join().unwrap();
        assert_eq!(first, line.to_text().into_bytes(), "the big frame whole");
        assert_eq!(second, br#"{"subscriptionId":"sub-7","n":2}"#.to_vec());
    }

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        let mut out = [0u8; 10];
        assert_eq!(frame_header(125, &mut out), 2);
        assert_eq!(out[..2], [0x81, 125]);
        assert_eq!(frame_header(126, &mut out), 4);
        assert_eq!(out[..4], [0x81, 126, 0, 126]);
        assert_eq!(frame_header(70_000, &mut out), 10);
        assert_eq!(out[..2], [0x81, 127]);
        let mut prefix = [0u8; 64];
        let n = subscription_prefix(1_234_567, &mut prefix);
        assert_eq!(&prefix[..n], br#"{"subscriptionId":"sub-1234567","#);
    }

    #[test]
    fn splices_the_subscription_id_into_the_shared_body() {
        let shared = message(7, r#"{"type":"log","message":"hi"}"#);
        assert_eq!(
            shared.to_text(),
            r#"{"subscriptionId":"sub-7","type":"log","message":"hi"}"#
        );
        assert_eq!(
            message(0, r#"{"type":"pong"}"#).to_text(),
            r#"{"type":"pong"}"#
        );
    }

    #[tokio::test]
    async fn full_queue_drops_logs_counts_them_and_keeps_replies() {
        let queue = outbound(2);
        for i in 0..5 {
            queue.push_log(message(1, &format!("{{\"n\":{i}}}")));
        }
        queue.push_reply(message(0, "{}"));
        assert!(queue.is_stalled(Instant::now()));
        let drained = queue.next().await;
        assert_eq!(drained.messages.len(), 3);
        assert_eq!(drained.dropped, vec![(1, 3)]);
        assert_eq!(queue.stats.messages_dropped.get(), 3);
        queue.written();
        assert!(
            !queue.is_stalled(Instant::now()),
            "draining and writing clear the stall"
        );
    }

    #[tokio::test]
    async fn the_byte_budget_drops_logs_and_a_writer_stuck_on_a_batch_is_stalled() {
        let queue = Outbound::new(
            OutboundLimits {
                max_queued: 1000,
                max_bytes: 10 * (100 + MESSAGE_OVERHEAD),
                max_metric_series: 10,
                stall_timeout: Duration::from_millis(50),
            },
            Arc::new(Stats::new()),
        );
        let line = "x".repeat(100 - 2);
        for _ in 0..25 {
            queue.push_log(message(3, &format!("\"{line}\"")));
        }
        let drained = queue.next().await;
        assert_eq!(drained.messages.len(), 10, "bounded in bytes, not count");
        assert_eq!(drained.dropped, vec![(3, 15)]);
        // The writer took a batch and cannot write it: stalled after the
        // timeout, however the queue looks.
        assert!(!queue.is_stalled(Instant::now()));
        std::thread::sleep(Duration::from_millis(60));
        assert!(queue.is_stalled(Instant::now()));
        queue.written();
        assert!(!queue.is_stalled(Instant::now()));
    }

    #[tokio::test]
    async fn connections_of_one_address_share_its_byte_budget() {
        // Each connection's first 64 KiB are its own; beyond, they share.
        let line = "x".repeat(ADDRESS_FREE_BYTES - MESSAGE_OVERHEAD);
        let small = "0123456789";
        let budget = Arc::new(AddressBudget {
            queued: Default::default(),
            max: 3 * (small.len() + MESSAGE_OVERHEAD),
        });
        let make = || outbound(100).with_address_budget(budget.clone());
        let (a, b) = (make(), make());
        a.push_log(message(1, &line));
        b.push_log(message(2, &line));
        for _ in 0..2 {
            a.push_log(message(1, small));
            b.push_log(message(2, small));
        }
        let drained_a = a.next().await;
        let drained_b = b.next().await;
        assert_eq!(
            drained_a.messages.len() + drained_b.messages.len(),
            2 + 3,
            "their own allowance each, then three shared"
        );
        let queued = || budget.queued.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(queued(), 0, "drained: given back");
        b.push_log(message(2, &line));
        b.push_log(message(2, small));
        assert!(queued() > 0);
        drop(b);
        assert_eq!(queued(), 0, "closed: given back");
    }

    #[tokio::test]
    async fn metrics_conflate_per_series() {
        let queue = outbound(10);
        let key = |app: &str| SeriesKey {
            subscription: 1,
            host: Arc::from("h"),
            application: Arc::from(app),
        };
        queue.push_metric(key("a"), message(1, r#"{"cpu":1}"#));
        queue.push_metric(key("a"), message(1, r#"{"cpu":2}"#));
        queue.push_metric(key("b"), message(1, r#"{"cpu":3}"#));
        queue.push_metric(key("c"), message(1, r#"{"cpu":4}"#));
        let drained = queue.next().await;
        let mut bodies: Vec<_> = drained.messages.iter().map(|m| m.body.clone()).collect();
        bodies.sort();
        assert_eq!(bodies, [&br#"{"cpu":2}"#[..], &br#"{"cpu":3}"#[..]]);
        assert_eq!(
            queue.stats.messages_dropped.get(),
            1,
            "series over the bound"
        );
    }
}
