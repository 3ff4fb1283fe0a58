//! Live counters of the relay, read by the REST endpoints and `/metrics`.
//!
//! Counters are plain atomics updated on the hot paths. Latency
//! (ingest → written to the socket) goes into HDR histograms over a recent
//! window: two histograms of [`LATENCY_WINDOW`] each, the older dropped at
//! every rotation, so percentiles cover the last one to two windows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Length of one latency histogram's window.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(30);

/// A gauge of a count (connections open now).
pub type Gauge = prometheus_client::metrics::gauge::Gauge<u64, AtomicU64>;

/// A gauge of a measured quantity (CPU %, milliseconds).
pub type FloatGauge = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// Every figure the relay reports, each registered once in [`Stats::registry`]
/// under its Prometheus name (counters get `_total` from the encoder).
/// Field names say what is counted; the REST mapping is in `rest.rs`.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    /// WebSocket connections open now.
    pub connections_current: Gauge,
    /// Most WebSocket connections open at once.
    pub connections_peak: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_total: Counter,
    /// Connections refused by a connection limit.
    pub connections_refused: Counter,
    /// Open connections with at least one subscription.
    pub connections_active: Gauge,
    /// Client messages received (text and binary frames).
    pub messages_received: Counter,
    /// Messages written to sockets.
    pub messages_sent: Counter,
    /// Of those, written by the router at once (an idle connection).
    pub messages_direct: Counter,
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
    pub agents_connected: Gauge,
    /// Uplink handshakes refused for bad credentials.
    pub uplink_auth_failures: Counter,
    /// Failed authentications of browsers and REST callers (bad or
    /// malformed tokens).
    pub auth_failures: Counter,
    /// Requests and upgrades refused: a `Host` or `Origin` not allowed.
    pub origin_refused: Counter,
    /// HTTPS connections whose TLS handshake failed or timed out.
    pub tls_handshake_failures: Counter,
    /// Uplink connections that failed in TLS/QUIC handshakes (wrong ALPN,
    /// bad certificate, garbage).
    pub uplink_handshake_failures: Counter,
    /// Uplink connections closed for a protocol error (bad frame, magic,
    /// version, oversize).
    pub uplink_protocol_errors: Counter,
    /// Ingest → socket latency, every delivery, in seconds (a Prometheus
    /// histogram: rates and quantiles over any range in PromQL).
    pub delivery_latency: LatencyHistogram,
    /// Figures computed at scrape time (`Stats::refresh_gauges`).
    scraped: ScrapedGauges,
    registry: Registry,
    latency: Mutex<LatencyWindow>,
    process: Mutex<ProcessSampler>,
}

#[derive(Debug, Default)]
struct ScrapedGauges {
    latency_mean: FloatGauge,
    latency_p95: FloatGauge,
    latency_p99: FloatGauge,
    cpu_percent: FloatGauge,
    resident_bytes: Gauge,
    uptime_seconds: FloatGauge,
    /// `[cluster]` figures (0 on a relay on its own).
    cluster: [Gauge; CLUSTER_GAUGES.len()],
}

const CLUSTER_GAUGES: [(&str, &str); 9] = [
    (
        "o1_cluster_healthy",
        "1 when connected to NATS JetStream and caught up (clustered relays).",
    ),
    (
        "o1_cluster_applied_sequence",
        "The last stream sequence this relay applied.",
    ),
    (
        "o1_cluster_stream_last_sequence",
        "The stream's last sequence.",
    ),
    (
        "o1_cluster_lag_messages",
        "Messages stored in the stream but not yet applied here.",
    ),
    ("o1_cluster_stream_bytes", "Bytes the stream holds."),
    ("o1_cluster_consumers", "Consumers on the stream."),
    (
        "o1_cluster_published_messages",
        "Messages this relay published to the stream.",
    ),
    (
        "o1_cluster_publish_failures",
        "Publishes JetStream did not confirm (agents not acked).",
    ),
    (
        "o1_cluster_duplicates",
        "Resent batch parts JetStream dropped by message id.",
    ),
];

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// Registers a clone of `metric` (they share their value) and returns it.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Stats {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let r = &mut r;
        fn counter(r: &mut Registry, name: &str, help: &str) -> Counter {
            registered(r, name, help, Counter::default())
        }
        fn gauge(r: &mut Registry, name: &str, help: &str) -> Gauge {
            registered(r, name, help, Gauge::default())
        }
        let mut stats = Stats {
            started: Instant::now(),
            connections_current: gauge(
                r,
                "o1_websocket_connections_open",
                "WebSocket connections open now.",
            ),
            connections_peak: gauge(
                r,
                "o1_websocket_connections_peak",
                "Most WebSocket connections open at once.",
            ),
            connections_total: counter(
                r,
                "o1_websocket_connections",
                "WebSocket connections accepted.",
            ),
            connections_refused: counter(
                r,
                "o1_websocket_connections_refused",
                "Connections refused by a limit.",
            ),
            connections_active: gauge(
                r,
                "o1_websocket_connections_active",
                "Connections with at least one subscription.",
            ),
            messages_received: counter(
                r,
                "o1_websocket_messages_received",
                "Client messages received.",
            ),
            messages_sent: counter(
                r,
                "o1_websocket_messages_sent",
                "Messages written to sockets.",
            ),
            messages_direct: counter(
                r,
                "o1_websocket_messages_direct",
                "Messages the router wrote to an idle connection's socket at once (no writer wake-up).",
            ),
            messages_dropped: counter(
                r,
                "o1_websocket_messages_dropped",
                "Messages dropped for slow readers.",
            ),
            invalid_messages: counter(
                r,
                "o1_websocket_invalid_messages",
                "Client messages answered with invalid_message.",
            ),
            rate_limited: counter(
                r,
                "o1_websocket_rate_limited",
                "Client messages answered with rate_limit_exceeded.",
            ),
            slow_readers_closed: counter(
                r,
                "o1_websocket_slow_readers_closed",
                "Connections closed as stalled readers.",
            ),
            http_refused: counter(
                r,
                "o1_http_connections_refused",
                "HTTP connections refused by http.max_connections.",
            ),
            batches_ingested: counter(r, "o1_ingest_batches", "Agent batches ingested."),
            items_ingested: counter(r, "o1_ingest_items", "Items ingested."),
            duplicate_batches: counter(
                r,
                "o1_ingest_duplicate_batches",
                "Duplicate batches dropped.",
            ),
            processing_errors: counter(r, "o1_ingest_errors", "Items that could not be processed."),
            agent_dropped_items: counter(
                r,
                "o1_agent_spool_dropped_items",
                "Items agents dropped from full spools.",
            ),
            agents_connected: gauge(r, "o1_uplink_agents_connected", "Agents connected now."),
            uplink_auth_failures: counter(
                r,
                "o1_uplink_auth_failures",
                "Agents refused for bad credentials.",
            ),
            auth_failures: counter(
                r,
                "o1_auth_failures",
                "Failed authentications of browsers and REST callers.",
            ),
            origin_refused: counter(
                r,
                "o1_http_origin_refused",
                "Requests refused for a Host or Origin that is not allowed.",
            ),
            tls_handshake_failures: counter(
                r,
                "o1_http_tls_handshake_failures",
                "HTTPS connections whose TLS handshake failed or timed out.",
            ),
            uplink_handshake_failures: counter(
                r,
                "o1_uplink_handshake_failures",
                "QUIC/TLS handshakes that failed.",
            ),
            uplink_protocol_errors: counter(
                r,
                "o1_uplink_protocol_errors",
                "Uplink connections closed for protocol errors.",
            ),
            delivery_latency: registered(
                r,
                "o1_delivery_latency_seconds",
                "Ingest-to-socket latency of every delivered message.",
                LatencyHistogram::default(),
            ),
            scraped: ScrapedGauges::default(),
            registry: Registry::default(),
            latency: Mutex::new(LatencyWindow::new()),
            process: Mutex::new(ProcessSampler::new()),
        };
        let g = &stats.scraped;
        let window = "over the recent window (o1_delivery_latency_seconds has every delivery)";
        registered(
            r,
            "o1_delivery_latency_mean_milliseconds",
            format!("Ingest-to-socket latency, mean {window}.").as_str(),
            g.latency_mean.clone(),
        );
        registered(
            r,
            "o1_delivery_latency_p95_milliseconds",
            format!("Ingest-to-socket latency, p95 {window}.").as_str(),
            g.latency_p95.clone(),
        );
        registered(
            r,
            "o1_delivery_latency_p99_milliseconds",
            format!("Ingest-to-socket latency, p99 {window}.").as_str(),
            g.latency_p99.clone(),
        );
        registered(
            r,
            "o1_process_cpu_percent",
            "Relay CPU use, percent of all cores.",
            g.cpu_percent.clone(),
        );
        registered(
            r,
            "o1_process_resident_memory_bytes",
            "Relay resident memory.",
            g.resident_bytes.clone(),
        );
        registered(
            r,
            "o1_process_uptime_seconds",
            "Seconds since the relay started.",
            g.uptime_seconds.clone(),
        );
        for ((name, help), gauge) in CLUSTER_GAUGES.iter().zip(&g.cluster) {
            registered(r, name, help, gauge.clone());
        }
        stats.registry = std::mem::take(r);
        stats
    }

    pub fn connection_opened(&self) {
        self.connections_total.inc();
        let now = self.connections_current.inc() + 1;
        self.connections_peak.inner().fetch_max(now, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_current.dec();
    }

    /// Adds latencies (microseconds) measured by one writer.
    pub fn record_latencies(&self, micros: &[u64]) {
        if micros.is_empty() {
            return;
        }
        self.delivery_latency.observe_micros(micros);
        self.latency.lock().record(micros, Instant::now());
    }

    /// Counts `count` deliveries one routing pass wrote directly (one
    /// message, many subscribers) and their one latency: counted here once
    /// per pass, not per subscriber (a shared counter per delivery is a
    /// contended cache line in the fan-out loop).
    pub fn record_direct(&self, micros: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.messages_sent.inc_by(count);
        self.messages_direct.inc_by(count);
        self.record_latency_n(micros, count);
    }

    /// Adds `count` deliveries of one latency.
    pub fn record_latency_n(&self, micros: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.delivery_latency.observe_micros_n(micros, count);
        let mut window = self.latency.lock();
        window.rotate_if_due(Instant::now());
        let _ = window.current.record_n(micros.max(1), count);
    }

    /// (mean, p95, p99) in milliseconds over the recent window.
    pub fn latency_millis(&self) -> (f64, f64, f64) {
        self.latency.lock().summary(Instant::now())
    }

    /// (cpu % of all cores since the previous call, resident bytes).
    pub fn process_usage(&self) -> (f64, u64) {
        self.process.lock().sample()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The OpenMetrics text of every figure (`GET /metrics`), with the
    /// cluster's when clustered.
    pub fn encode_metrics(&self, cluster: Option<&o1_common::api::ClusterStats>) -> String {
        if let Some(c) = cluster {
            let values = [
                u64::from(c.healthy),
                c.applied_sequence,
                c.stream_last_sequence,
                c.lag_messages,
                c.stream_bytes,
                c.consumers,
                c.published_messages,
                c.publish_failures,
                c.duplicates,
            ];
            for (gauge, value) in self.scraped.cluster.iter().zip(values) {
                gauge.set(value);
            }
        }
        let (mean, p95, p99) = self.latency_millis();
        let (cpu, memory) = self.process_usage();
        let g = &self.scraped;
        g.latency_mean.set(mean);
        g.latency_p95.set(p95);
        g.latency_p99.set(p99);
        g.cpu_percent.set(cpu);
        g.resident_bytes.set(memory);
        g.uptime_seconds.set(self.uptime().as_secs_f64());
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Upper bounds of the latency buckets: 100 µs doubling to ~3.3 s, then
/// +Inf.
const BUCKET_BOUNDS_MICROS: [u64; 16] = {
    let mut bounds = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        bounds[i] = 100 << i;
        i += 1;
    }
    bounds
};

/// A Prometheus histogram of latencies, lock-free: a writer adds the
/// latencies of all it wrote at once, one atomic add per bucket it touched
/// (the crate's `Histogram` takes a lock per observation, which showed at
/// 2 million deliveries a second).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<LatencyCounts>,
}

#[derive(Debug, Default)]
struct LatencyCounts {
    /// One more than the bounds: the last is +Inf.
    buckets: [AtomicU64; BUCKET_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe_micros(&self, micros: &[u64]) {
        let mut local = [0u64; BUCKET_BOUNDS_MICROS.len() + 1];
        let mut sum = 0u64;
        for &value in micros {
            let bucket = BUCKET_BOUNDS_MICROS.partition_point(|&bound| bound < value);
            local[bucket] += 1;
            sum = sum.saturating_add(value);
        }
        for (bucket, n) in self.inner.buckets.iter().zip(local) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        self.inner.sum_micros.fetch_add(sum, Relaxed);
        self.inner.count.fetch_add(micros.len() as u64, Relaxed);
    }
}

impl LatencyHistogram {
    /// `count` observations of one value.
    pub fn observe_micros_n(&self, micros: u64, count: u64) {
        let bucket = BUCKET_BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        if let Some(slot) = self.inner.buckets.get(bucket) {
            slot.fetch_add(count, Relaxed);
        }
        self.inner
            .sum_micros
            .fetch_add(micros.saturating_mul(count), Relaxed);
        self.inner.count.fetch_add(count, Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BUCKET_BOUNDS_MICROS
            .iter()
            .map(|&micros| micros as f64 / 1e6)
            .chain([f64::MAX]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(self.inner.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        let sum = self.inner.sum_micros.load(Relaxed) as f64 / 1e6;
        let count = self.inner.count.load(Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
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
    fn metrics_keep_their_names_and_types() {
        let stats = Stats::new();
        stats.messages_sent.inc_by(5);
        stats.agents_connected.inc();
        stats.record_latencies(&[250, 3_000]);
        let text = stats.encode_metrics(None);
        let table = [
            "# TYPE o1_websocket_messages_sent counter",
            "o1_websocket_messages_sent_total 5",
            "# TYPE o1_uplink_agents_connected gauge",
            "o1_uplink_agents_connected 1",
            "# TYPE o1_delivery_latency_seconds histogram",
            "o1_delivery_latency_seconds_count 2",
            "o1_delivery_latency_seconds_bucket{le=\"0.0004\"} 1",
            "o1_delivery_latency_seconds_bucket{le=\"+Inf\"} 2",
            "o1_delivery_latency_seconds_sum 0.00325",
            "# TYPE o1_delivery_latency_p99_milliseconds gauge",
            "o1_process_uptime_seconds ",
            "# EOF",
        ];
        for line in table {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} in\n{text}"
            );
        }
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
