//! `o1-agent deploy --id ID --app NAME -- COMMAND ARGS...`: runs one
//! deployment step and streams it through the relay.
//!
//! - stdout and stderr lines become `log` messages of the deployment (and
//!   are echoed, so CI logs keep them);
//! - a line `::progress N message` becomes a `deployment` message with
//!   progress N (0–100) and that message, and is not logged;
//! - the exit status becomes `completed` or `failed`; Ctrl-C or SIGTERM
//!   stops the command (SIGTERM, then SIGKILL after 5 s) and reports
//!   `cancelled`.
//!
//! It uses the agent's configuration and token, with its own agent id per
//! run (so its sequence numbers never collide with the running agent's),
//! and holds its batches in memory until acknowledged (reconnecting if
//! needed). It exits with the command's exit code (130 when cancelled).

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use o1_common::Timestamp;
use o1_common::api::DeploymentStatus;
use o1_common::wire::{self, DeploymentEvent, Item, LogRecord};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::level::detect_level;
use crate::uplink::{self, UplinkSettings};

/// How long to wait for the relay to acknowledge everything at the end.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses `::progress N message`.
pub fn parse_progress(line: &str) -> Option<(u8, String)> {
    let rest = line.trim_start().strip_prefix("::progress")?;
    let rest = rest.strip_prefix(' ')?.trim_start();
    let (number, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let progress: u8 = number.trim_end_matches('%').parse().ok()?;
    (progress <= 100).then(|| (progress, message.trim().to_owned()))
}

/// The deployment a step reports to: makes its items.
#[derive(Debug, Clone)]
struct Step {
    id: String,
    app: String,
}

impl Step {
    fn event(&self, status: DeploymentStatus, progress: Option<u8>, message: String) -> Item {
        Item::Deployment(DeploymentEvent {
            deployment_id: self.id.clone(),
            application: self.app.clone(),
            timestamp_ms: Timestamp::now().unix_millis,
            status,
            progress,
            message,
        })
    }

    fn log(&self, message: String) -> Item {
        Item::Log(LogRecord {
            application: self.app.clone(),
            timestamp_ms: Timestamp::now().unix_millis,
            level: detect_level(&message),
            message,
            deployment_id: Some(self.id.clone()),
        })
    }

    /// A line of the step's stdout: a progress report or a log line.
    fn stdout_line(&self, line: String) -> Item {
        match parse_progress(&line) {
            Some((progress, message)) => {
                self.event(DeploymentStatus::Running, Some(progress), message)
            }
            None => self.log(line),
        }
    }
}

/// How the step ended: the final status, its message and the exit code.
fn outcome(
    status: &std::io::Result<std::process::ExitStatus>,
    cancelled: bool,
    program: &str,
) -> (DeploymentStatus, String, u8) {
    match status {
        _ if cancelled => (
            DeploymentStatus::Cancelled,
            "Deployment cancelled".to_owned(),
            130u8,
        ),
        Ok(status) if status.success() => (
            DeploymentStatus::Completed,
            "Deployment completed successfully".to_owned(),
            0,
        ),
        Ok(status) => {
            let code = status.code().unwrap_or(1);
            (
                DeploymentStatus::Failed,
                format!("Deployment failed: {program} exited with code {code}"),
                code.clamp(1, 255) as u8,
            )
        }
        Err(error) => (
            DeploymentStatus::Failed,
            format!("Deployment failed: {error}"),
            1,
        ),
    }
}

pub async fn run(
    config: AgentConfig,
    id: Option<String>,
    app: String,
    command: Vec<String>,
) -> ExitCode {
    let id = id.unwrap_or_else(|| o1_common::deployment::base_id(Timestamp::now()));
    if !o1_common::deployment::valid_id(&id) {
        let rule = o1_common::deployment::ID_RULE;
        eprintln!("o1-agent deploy: invalid --id `{id}`: {rule}");
        return ExitCode::from(2);
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("o1-agent deploy: no command given after --");
        return ExitCode::from(2);
    };
    let base_id = crate::agent_id(&config.state_dir).unwrap_or_else(|_| config.host_name());
    let suffix: u32 = rand::random();
    let settings = crate::uplink_settings(&config, format!("{base_id}/deploy/{id}/{suffix:08x}"));
    let (items, receiver) = mpsc::channel::<Item>(1024);
    let shipper = tokio::spawn(ship(settings, receiver));
    let step = Step { id, app };
    let running = format!("Running {}", command.join(" "));
    let _ = items
        .send(step.event(DeploymentStatus::Running, Some(0), running))
        .await;
    eprintln!(
        "o1-agent deploy: deployment {} of {}: running {}",
        step.id,
        step.app,
        command.join(" ")
    );
    let (status, cancelled) = match tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so cancelling stops the whole step.
        .process_group(0)
        .spawn()
    {
        Ok(child) => supervise(child, &step, &items).await,
        Err(error) => {
            let message = format!("cannot start {program}: {error}");
            eprintln!("o1-agent deploy: {message}");
            let _ = items
                .send(step.event(DeploymentStatus::Failed, None, message))
                .await;
            drop(items);
            let _ = tokio::time::timeout(FINAL_ACK_TIMEOUT, shipper).await;
            return ExitCode::from(127);
        }
    };
    let (final_status, message, code) = outcome(&status, cancelled, program);
    let progress = (final_status == DeploymentStatus::Completed).then_some(100);
    let _ = items
        .send(step.event(final_status, progress, message.clone()))
        .await;
    drop(items);
    eprintln!("o1-agent deploy: {message}");
    match tokio::time::timeout(FINAL_ACK_TIMEOUT, shipper).await {
        Ok(Ok(true)) => {}
        _ => eprintln!("o1-agent deploy: warning: the relay did not acknowledge every event"),
    }
    ExitCode::from(code)
}

/// Streams the running step's output as items until it exits (and its
/// pipes are drained); Ctrl-C or SIGTERM stops it. Returns its exit status
/// and whether it was cancelled.
async fn supervise(
    mut child: tokio::process::Child,
    step: &Step,
    items: &mpsc::Sender<Item>,
) -> (std::io::Result<std::process::ExitStatus>, bool) {
    let mut stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
    let mut stderr = child.stderr.take().map(|s| BufReader::new(s).lines());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut cancelled = false;
    let mut exited: Option<std::io::Result<std::process::ExitStatus>> = None;
    // After the step exits, output still in the pipes is read for a moment;
    // a grandchild holding them open does not keep us waiting.
    let mut drain_until = tokio::time::Instant::now() + Duration::from_secs(3600);
    let status = loop {
        if exited.is_some() && stdout.is_none() && stderr.is_none() {
            break exited
                .take()
                .unwrap_or_else(|| Err(std::io::Error::other("no status")));
        }
        tokio::select! {
            line = async { stdout.as_mut()?.next_line().await.ok().flatten() }, if stdout.is_some() => {
                match line {
                    Some(line) => {
                        println!("{line}");
                        let _ = items.send(step.stdout_line(line)).await;
                    }
                    None => stdout = None,
                }
            }
            line = async { stderr.as_mut()?.next_line().await.ok().flatten() }, if stderr.is_some() => {
                match line {
                    Some(line) => {
                        eprintln!("{line}");
                        let _ = items.send(step.log(line)).await;
                    }
                    None => stderr = None,
                }
            }
            status = child.wait(), if exited.is_none() => {
                exited = Some(status);
                drain_until = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            _ = tokio::time::sleep_until(drain_until), if exited.is_some() => {
                break exited.take().unwrap_or_else(|| Err(std::io::Error::other("no status")));
            }
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                stop_child(&mut child).await;
            }
            _ = async { term.as_mut()?.recv().await }, if !cancelled && term.is_some() => {
                cancelled = true;
                stop_child(&mut child).await;
            }
        }
    };
    (status, cancelled)
}

/// SIGTERM to the step's process group, SIGKILL after 5 s.
async fn stop_child(child: &mut tokio::process::Child) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let Some(group) = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(Pid::from_raw)
    else {
        return;
    };
    let _ = kill_process_group(group, Signal::TERM);
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = kill_process_group(group, Signal::KILL);
        let _ = child.start_kill();
    }
}

/// Sends items as batches, resending unacknowledged ones after a
/// reconnect. Returns whether everything was acknowledged.
async fn ship(settings: UplinkSettings, mut receiver: mpsc::Receiver<Item>) -> bool {
    let endpoint = match uplink::endpoint(&settings) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            eprintln!("o1-agent deploy: {error}");
            return false;
        }
    };
    let mut unacked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next_sequence = 1u64;
    let mut open = true;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempt = 0usize;
    loop {
        // Each attempt goes to the next relay of the list.
        let relay = &settings.addresses[attempt % settings.addresses.len().max(1)];
        attempt += 1;
        let mut session = match uplink::connect(&endpoint, &settings, relay).await {
            Ok(session) => session,
            Err(error) => {
                eprintln!("o1-agent deploy: relay unreachable ({error}); retrying");
                if matches!(error, uplink::UplinkError::Refused(_)) {
                    return false;
                }
                tokio::time::sleep(backoff.wait()).await;
                // Keep reading output meanwhile, so the command never blocks.
                while let Ok(item) = receiver.try_recv() {
                    push_batch(
                        &mut unacked,
                        &mut next_sequence,
                        vec![item],
                        settings.max_frame,
                    );
                }
                continue;
            }
        };
        backoff.reset();
        let mut sent_upto = 0u64;
        let result: Result<(), uplink::UplinkError> = async {
            loop {
                for (sequence, frame) in &unacked {
                    if *sequence > sent_upto {
                        session.send_frame(frame).await?;
                        sent_upto = *sequence;
                    }
                }
                if !open && unacked.is_empty() {
                    return Ok(());
                }
                tokio::select! {
                    item = receiver.recv(), if open => match item {
                        Some(item) => {
                            let mut batch = vec![item];
                            while batch.len() < 256 {
                                match receiver.try_recv() {
                                    Ok(item) => batch.push(item),
                                    Err(_) => break,
                                }
                            }
                            push_batch(&mut unacked, &mut next_sequence, batch, settings.max_frame);
                        }
                        None => open = false,
                    },
                    ack = session.next_ack() => {
                        let acked = ack?;
                        unacked.retain(|(sequence, _)| *sequence > acked);
                    }
                }
            }
        }
        .await;
        match result {
            Ok(()) => {
                session.close().await;
                endpoint.wait_idle().await;
                return true;
            }
            Err(error) => {
                eprintln!("o1-agent deploy: connection to the relay lost ({error}); resending")
            }
        }
    }
}

fn push_batch(
    unacked: &mut Vec<(u64, Vec<u8>)>,
    next_sequence: &mut u64,
    items: Vec<Item>,
    max_frame: usize,
) {
    let sequence = *next_sequence;
    if let Ok(frame) = wire::encode_batch(sequence, items, 0, max_frame) {
        unacked.push((sequence, frame));
        *next_sequence += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_table() {
        let table = [
            (
                "::progress 45 Installing dependencies...",
                Some((45, "Installing dependencies...")),
            ),
            ("::progress 100", Some((100, ""))),
            ("::progress 50% half way", Some((50, "half way"))),
            ("::progress 101 too far", None),
            ("::progress x nope", None),
            ("::progressive 5", None),
            ("progress 5", None),
        ];
        for (line, expected) in table {
            let got = parse_progress(line);
            assert_eq!(
                got.as_ref().map(|(p, m)| (*p, m.as_str())),
                expected,
                "{line}"
            );
        }
    }

    #[test]
    fn outcomes_table() {
        use std::os::unix::process::ExitStatusExt;
        let exit = |code: i32| Ok(std::process::ExitStatus::from_raw(code << 8));
        let cases = [
            (exit(0), false, DeploymentStatus::Completed, 0u8),
            (exit(3), false, DeploymentStatus::Failed, 3),
            (exit(0), true, DeploymentStatus::Cancelled, 130),
            (
                Err(std::io::Error::other("lost")),
                false,
                DeploymentStatus::Failed,
                1,
            ),
        ];
        for (status, cancelled, expected, code) in cases {
            let (got, message, exit_code) = outcome(&status, cancelled, "make");
            assert_eq!((got, exit_code), (expected, code), "{message}");
        }
        let (_, message, _) = outcome(&exit(3), false, "make");
        assert_eq!(message, "Deployment failed: make exited with code 3");
    }
}
