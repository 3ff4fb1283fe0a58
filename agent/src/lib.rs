//! o1-agent: samples host and application metrics, tails log files, runs
//! deployment steps, and pushes everything to the relay over QUIC without
//! losing anything when the relay or the network goes away.
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`metrics`]: sysinfo sampling of the host and applications.
//! - [`tail`]: following log files through rotation; [`level`]: levels.
//! - [`pipeline`]: batcher, sender and checkpointer.
//! - [`spool`]: the crash-safe on-disk spool; [`checkpoint`]: file positions.
//! - [`uplink`]: the QUIC client; [`deploy`]: `o1-agent deploy`.

pub mod backoff;
pub mod checkpoint;
pub mod config;
pub mod deploy;
pub mod journal;
pub mod level;
pub mod lines;
pub mod metrics;
pub mod pipeline;
pub mod spool;
pub mod tail;
pub mod uplink;

use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use o1_common::wire::Item;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoint;
use crate::config::AgentConfig;
use crate::pipeline::{AgentStats, CheckpointState, Event};
use crate::spool::{Spool, SpoolLimits};
use crate::tail::{AppLogs, Tailer};
use crate::uplink::UplinkSettings;

/// How often acknowledged positions are written to the checkpoint.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the state directory {path} (state_dir): {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the agent id {path}: {source}")]
    AgentId {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the spool in {path}: {source}")]
    Spool {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start metrics sampling: {0}")]
    Metrics(#[from] sysinfo::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// The agent's stable id, made on first start and kept in the state dir.
pub fn agent_id(state_dir: &Path) -> Result<String, AgentError> {
    let path = state_dir.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let bytes: [u8; 16] = rand::random();
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    checkpoint::write_atomically(&path, id.as_bytes())
        .map_err(|source| AgentError::AgentId { path, source })?;
    Ok(id)
}

pub fn uplink_settings(config: &AgentConfig, agent_id: String) -> UplinkSettings {
    UplinkSettings {
        addresses: if config.relay.addresses.is_empty() {
            vec![config.relay.address.clone()]
        } else {
            config.relay.addresses.clone()
        },
        ack_timeout: Duration::from_millis(config.relay.ack_timeout_ms),
        server_name: config.relay.server_name.clone(),
        ca: config.relay.ca.clone(),
        insecure_skip_verify: config.relay.insecure_skip_verify,
        token: config.relay.token.clone(),
        client_cert: config
            .relay
            .client_cert
            .clone()
            .zip(config.relay.client_key.clone()),
        host: config.host_name(),
        agent_id,
        applications: config.applications.iter().map(|a| a.name.clone()).collect(),
        idle_timeout: Duration::from_secs(config.relay.idle_timeout_secs),
        max_frame: o1_common::wire::DEFAULT_MAX_FRAME,
    }
}

/// Runs the agent until `shutdown`, then flushes and returns.
///
/// Stopping: the producers (tailer, journal readers, metrics) all watch
/// `shutdown`. The shipping side (sender, checkpointer) has its own token,
/// cancelled only once the producers have drained into the spool, so what
/// was read before the stop is spooled, and sent if the relay is there.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let state_dir = config.state_dir.clone();
    prepare_state_dir(&state_dir)?;
    let agent_id = agent_id(&state_dir)?;
    let checkpoint_path = checkpoint::checkpoint_path(&state_dir);
    let (checkpoint, had_checkpoint) = load_checkpoint(&checkpoint_path);
    let (spool, recovery) = open_spool(&config, checkpoint.acked_sequence)?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            cut_bytes = recovery.truncated_bytes,
            "the spool had a torn tail; it was cut off"
        );
    }
    tracing::info!(
        agent_id = %agent_id,
        host = %config.host_name(),
        spooled_batches = spool.unacked_batches(),
        "o1-agent starting"
    );
    let mut resume = checkpoint.clone();
    resume.apply(&spool.pending_offsets());
    // Files changed after this were written to while the agent was not
    // reading: rotated siblings that new are read from their start.
    let stopped_at = std::fs::metadata(&checkpoint_path)
        .and_then(|m| m.modified())
        .ok();
    let first_run = !had_checkpoint && recovery.records == 0;
    let spool = Arc::new(Mutex::new(spool));
    let spooled = Arc::new(Notify::new());
    let stats = Arc::new(AgentStats::default());
    let acked = Arc::new(Mutex::new(CheckpointState::new(checkpoint)));
    let acked_notify = Arc::new(Notify::new());

    let (events, receiver) = std::sync::mpsc::sync_channel::<Event>(pipeline::EVENT_QUEUE);
    // One pending "appended" is enough: the sync it starts covers the rest.
    let (appended, appended_rx) = std::sync::mpsc::sync_channel::<()>(1);
    {
        let spool = spool.clone();
        std::thread::Builder::new()
            .name("o1-spool-sync".into())
            .spawn(move || pipeline::run_spool_sync(spool, appended_rx))
            .map_err(AgentError::Thread)?;
    }
    let batcher = {
        let (spool, spooled, stats, limits) = (
            spool.clone(),
            spooled.clone(),
            stats.clone(),
            config.batch.clone(),
        );
        std::thread::Builder::new()
            .name("o1-batcher".into())
            .spawn(move || pipeline::run_batcher(receiver, spool, spooled, appended, limits, stats))
            .map_err(AgentError::Thread)?
    };
    let producers = start_producers(
        &config, resume, stopped_at, first_run, &events, &stats, &shutdown,
    )?;

    // The shipping side stops after the producers (see above).
    let shipping = CancellationToken::new();
    let sender = tokio::spawn(pipeline::run_sender(
        pipeline::Sender {
            settings: uplink_settings(&config, agent_id),
            spool: spool.clone(),
            spooled: spooled.clone(),
            acked: acked.clone(),
            acked_notify: acked_notify.clone(),
            max_in_flight: config.relay.max_in_flight,
            backoff: (
                Duration::from_millis(config.relay.min_backoff_ms),
                Duration::from_millis(config.relay.max_backoff_ms),
            ),
            stats: stats.clone(),
            batcher: events.clone(),
        },
        shipping.clone(),
    ));
    let checkpointer = tokio::spawn(pipeline::run_checkpointer(
        checkpoint_path.clone(),
        spool.clone(),
        acked.clone(),
        acked_notify.clone(),
        CHECKPOINT_INTERVAL,
        shipping.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!("o1-agent stopping");
    if let Some(task) = producers.metrics {
        let _ = task.await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for thread in producers.threads {
            let _ = thread.join();
        }
        // Every producer is done: the batcher flushes and ends.
        let _ = events.send(Event::Stop);
        let _ = batcher.join();
    })
    .await;
    shipping.cancel();
    let _ = sender.await;
    let _ = checkpointer.await;
    pipeline::write_checkpoint(&checkpoint_path, &spool, &acked, true);
    if let Err(error) = spool.lock().maybe_sync() {
        tracing::error!(%error, "cannot fsync the spool");
    }
    Ok(())
}

/// Makes the state directory, private: the spool holds log lines, the
/// checkpoint file paths.
fn prepare_state_dir(state_dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(state_dir).map_err(|source| AgentError::StateDir {
        path: state_dir.to_owned(),
        source,
    })?;
    if let Err(error) = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
    {
        tracing::warn!(%error, dir = %state_dir.display(), "cannot make the state directory private (0700)");
    }
    Ok(())
}

/// The checkpoint, and whether there was one. An unusable one is kept
/// aside (`.corrupt`) and the agent starts fresh.
fn load_checkpoint(path: &Path) -> (Checkpoint, bool) {
    match checkpoint::load(path) {
        Ok(Some(checkpoint)) => (checkpoint, true),
        Ok(None) => (Checkpoint::default(), false),
        Err(error) => {
            tracing::error!(%error, "checkpoint unusable; keeping it aside and starting fresh");
            let _ = std::fs::rename(path, path.with_extension("corrupt"));
            (Checkpoint::default(), true)
        }
    }
}

fn open_spool(config: &AgentConfig, acked: u64) -> Result<(Spool, spool::Recovery), AgentError> {
    let limits = SpoolLimits {
        max_bytes: config.spool.max_bytes,
        segment_bytes: config.spool.segment_bytes,
        fsync_interval: Duration::from_millis(config.spool.fsync_interval_ms),
        max_frame: o1_common::wire::DEFAULT_MAX_FRAME,
    };
    Spool::open(&config.state_dir.join("spool"), limits, acked).map_err(|source| {
        AgentError::Spool {
            path: config.state_dir.clone(),
            source,
        }
    })
}

/// What feeds the batcher: the tailer and journal threads, the metrics task.
struct Producers {
    threads: Vec<std::thread::JoinHandle<()>>,
    metrics: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the tailer, a journal reader per application with a journal,
/// and metrics sampling; all stop on `shutdown`.
fn start_producers(
    config: &AgentConfig,
    resume: Checkpoint,
    stopped_at: Option<std::time::SystemTime>,
    first_run: bool,
    events: &std::sync::mpsc::SyncSender<Event>,
    stats: &Arc<AgentStats>,
    shutdown: &CancellationToken,
) -> Result<Producers, AgentError> {
    let mut threads = Vec::new();
    let apps: Vec<AppLogs> = config
        .applications
        .iter()
        .filter(|a| !a.logs.is_empty())
        .map(|a| AppLogs {
            name: a.name.clone(),
            patterns: a.logs.clone(),
            multiline: a.multiline,
            follow_symlinks: a.follow_symlinks,
        })
        .collect();
    if !apps.is_empty() {
        let tailer = Tailer::new(
            apps,
            config.logs.clone(),
            resume.files,
            if first_run { None } else { stopped_at },
            first_run,
            events.clone(),
        );
        let stop = shutdown.clone();
        threads.push(
            std::thread::Builder::new()
                .name("o1-tailer".into())
                .spawn(move || tailer.run(stop))
                .map_err(AgentError::Thread)?,
        );
    }
    for app in &config.applications {
        let Some(journal) = &app.journal else {
            continue;
        };
        let reader = journal::JournalReader {
            source: journal::JournalSource::new(&app.name, journal, config.logs.max_line_bytes),
            cursor: resume.journals.get(&app.name).cloned(),
            start_at: config.logs.start_at,
            events: events.clone(),
            handle: journal::StopHandle::new(shutdown.clone()),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("o1-journal-{}", app.name))
                .spawn(move || reader.run())
                .map_err(AgentError::Thread)?,
        );
    }
    let mut metrics = None;
    if config.metrics.enabled {
        let sampler = metrics::Sampler::new(
            &config.metrics.disk_path,
            &config.applications,
            Duration::from_secs(config.metrics.discovery_interval_secs),
        )?;
        let (events, stats, interval) = (events.clone(), stats.clone(), config.interval());
        metrics = Some(tokio::spawn(sample_metrics(
            sampler,
            interval,
            events,
            shutdown.clone(),
            stats,
        )));
    }
    Ok(Producers { threads, metrics })
}

/// Samples every `interval` until `stop`. Sampling reads /proc, so it
/// runs on a blocking thread.
async fn sample_metrics(
    mut sampler: metrics::Sampler,
    interval: Duration,
    events: std::sync::mpsc::SyncSender<Event>,
    stop: CancellationToken,
    stats: Arc<AgentStats>,
) {
    // CPU usage needs two readings at least this far apart.
    let mut next = tokio::time::Instant::now()
        + sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let now = tokio::time::Instant::now();
        next += interval;
        if next < now {
            next = now + interval;
        }
        let sampled = tokio::task::spawn_blocking(move || {
            let samples = sampler.sample();
            (sampler, samples)
        })
        .await;
        let Ok((back, samples)) = sampled else {
            return;
        };
        sampler = back;
        let samples: Vec<Item> = samples.into_iter().map(Item::Metric).collect();
        match events.try_send(Event::Items(samples)) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                let dropped = stats.metric_samples_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the 1st, 2nd, 4th, 8th... drop: visible, never a flood.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped_samples = dropped,
                        "the batcher is behind; metric samples dropped"
                    );
                }
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
        }
    }
}
