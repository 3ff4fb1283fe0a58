//! Live counters of the relay, read by the REST endpoints and `/metrics`.
//!
//! Counters are plain atomics updated on the hot paths. Latency
//! (ingest → written to the socket) goes into HDR histograms over a recent
//! window: two histograms of [`LATENCY_WINDOW`] each, the older dropped at
//! every rotation, so percentiles cover the last one to two windows.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Length of one latency histogram's window.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Every figure the relay reports. Field names say what is counted; the
/// REST mapping is in `rest.rs`.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    /// WebSocket connections open now.
    pub connections_current: Counter,
    /// Most WebSocket connections open at once.
    pub connections_peak: Counter,
    /// WebSocket connections accepted since start.
    pub connections_total: Counter,
    /// Connections refused by a connection limit.
    pub connections_refused: Counter,
    /// Open connections with at least one subscription.
    pub connections_active: Counter,
    /// Client messages received (text and binary frames).
    pub messages_received: Counter,
    /// Messages written to sockets.
    pub messages_sent: Counter,
    /// Messages dropped for slow readers (their queue was full).
    pub messages_dropped: Counter,
    /// Client messages answered with `invalid_message`.
    pub invalid_messages: Counter,
    /// Client messages answered with `rate_limit_exceeded`.
    pub rate_limited: Counter,
    /// Connections closed because the reader stalled.
    pub slow_readers_closed: Counter,
    /// HTTP connections refused by `http.max_connections`.
    pub http_refused: Counter,
    /// Agent batches ingested (duplicates excluded).
    pub batches_ingested: Counter,
    /// Items in those batches.
    pub items_ingested: Counter,
    /// Duplicate batches dropped by (agent, sequence).
    pub duplicate_batches: Counter,
    /// Items that could not be processed (e.g. an invalid deployment event).
    pub processing_errors: Counter,
    /// Items agents reported dropping from a full spool.
    pub agent_dropped_items: Counter,
    /// Agents connected over QUIC now.
    pub agents_connected: Counter,
    /// Uplink handshakes refused for bad credentials.
    pub uplink_auth_failures: Counter,
    /// Uplink connections that failed in TLS/QUIC handshakes (wrong ALPN,
    /// bad certificate, garbage).
    pub uplink_handshake_failures: Counter,
    /// Uplink connections closed for a protocol error (bad frame, magic,
    /// version, oversize).
    pub uplink_protocol_errors: Counter,
    latency: Mutex<LatencyWindow>,
    process: Mutex<ProcessSampler>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            started: Instant::now(),
            connections_current: Counter::default(),
            connections_peak: Counter::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            connections_active: Counter::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            messages_dropped: Counter::default(),
            invalid_messages: Counter::default(),
            rate_limited: Counter::default(),
            slow_readers_closed: Counter::default(),
            http_refused: Counter::default(),
            batches_ingested: Counter::default(),
            items_ingested: Counter::default(),
            duplicate_batches: Counter::default(),
            processing_errors: Counter::default(),
            agent_dropped_items: Counter::default(),
            agents_connected: Counter::default(),
            uplink_auth_failures: Counter::default(),
            uplink_handshake_failures: Counter::default(),
            uplink_protocol_errors: Counter::default(),
            latency: Mutex::new(LatencyWindow::new()),
            process: Mutex::new(ProcessSampler::new()),
        }
    }

    pub fn connection_opened(&self) {
        self.connections_total.inc();
        let now = self.connections_current.0.fetch_add(1, Relaxed) + 1;
        self.connections_peak.0.fetch_max(now, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_current.sub(1);
    }

    /// Adds latencies (microseconds) measured by one writer.
    pub fn record_latencies(&self, micros: &[u64]) {
        if micros.is_empty() {
            return;
        }
        if let Ok(mut window) = self.latency.lock() {
            window.record(micros, Instant::now());
        }
    }

    /// (mean, p95, p99) in milliseconds over the recent window.
    pub fn latency_millis(&self) -> (f64, f64, f64) {
        match self.latency.lock() {
            Ok(mut window) => window.summary(Instant::now()),
            Err(_) => (0.0, 0.0, 0.0),
        }
    }

    /// (cpu % of all cores since the previous call, resident bytes).
    pub fn process_usage(&self) -> (f64, u64) {
        match self.process.lock() {
            Ok(mut sampler) => sampler.sample(),
            Err(_) => (0.0, 0),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[derive(Debug)]
struct LatencyWindow {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    rotated_at: Instant,
}

impl LatencyWindow {
    fn new() -> Self {
        LatencyWindow {
            current: new_histogram(),
            previous: new_histogram(),
            rotated_at: Instant::now(),
        }
    }

    fn rotate_if_due(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.rotated_at);
        if elapsed >= LATENCY_WINDOW {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            if elapsed >= 2 * LATENCY_WINDOW {
                self.previous.reset();
            }
            self.rotated_at = now;
        }
    }

    fn record(&mut self, micros: &[u64], now: Instant) {
        self.rotate_if_due(now);
        for &value in micros {
            self.current.saturating_record(value.max(1));
        }
    }

    fn summary(&mut self, now: Instant) -> (f64, f64, f64) {
        self.rotate_if_due(now);
        let mut merged = self.current.clone();
        // Same bounds, so adding cannot fail.
        let _ = merged.add(&self.previous);
        if merged.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        let millis = |micros: f64| (micros / 1000.0 * 1000.0).round() / 1000.0;
        (
            millis(merged.mean()),
            millis(merged.value_at_quantile(0.95) as f64),
            millis(merged.value_at_quantile(0.99) as f64),
        )
    }
}

#[allow(clippy::expect_used)] // constant bounds, valid by construction
fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The relay's own CPU and memory, through sysinfo.
#[derive(Debug)]
struct ProcessSampler {
    system: Option<sysinfo::System>,
    pid: Option<sysinfo::Pid>,
    cores: f64,
}

impl ProcessSampler {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        ProcessSampler {
            system: sysinfo::System::new().ok(),
            pid: sysinfo::get_current_pid().ok(),
            cores,
        }
    }

    fn sample(&mut self) -> (f64, u64) {
        let (Some(pid), Some(system)) = (self.pid, self.system.as_mut()) else {
            return (0.0, 0);
        };
        system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[pid]),
            false,
            sysinfo::ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory(),
        );
        match system.process(pid) {
            Some(process) => (
                f64::from(process.cpu_usage()) / self.cores,
                process.memory(),
            ),
            None => (0.0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_window_forgets_old_samples() {
        let mut window = LatencyWindow::new();
        let start = window.rotated_at;
        window.record(&[1_000, 2_000, 100_000], start);
        let (mean, _, p99) = window.summary(start);
        assert!(mean > 30.0 && mean < 40.0, "mean {mean}");
        assert!((p99 - 100.0).abs() < 0.2, "p99 {p99}");
        // One window later the samples are still there (previous)...
        let (mean, _, _) = window.summary(start + LATENCY_WINDOW);
        assert!(mean > 0.0);
        // ...two windows later they are gone.
        let (mean, p95, p99) = window.summary(start + 3 * LATENCY_WINDOW);
        assert_eq!((mean, p95, p99), (0.0, 0.0, 0.0));
    }

    #[test]
    fn peak_follows_current() {
        let stats = Stats::new();
        stats.connection_opened();
        stats.connection_opened();
        stats.connection_closed();
        stats.connection_opened();
        assert_eq!(stats.connections_current.get(), 2);
        assert_eq!(stats.connections_peak.get(), 2);
        assert_eq!(stats.connections_total.get(), 3);
    }
}
