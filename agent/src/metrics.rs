//! Host and per-application metrics, sampled with sysinfo at the lowest
//! cost we could find:
//!
//! - only what is reported is refreshed (CPU usage, RAM, the disks that
//!   matter, network counters): never `refresh_all`;
//! - an application's processes come from its systemd unit's cgroup
//!   (`cgroup.procs`, exact and cheap) or, for name and command-line
//!   matchers, from a full process scan every `discovery_interval_secs`
//!   (or when a known process vanished); in between only the known PIDs are
//!   refreshed;
//! - the first sample is taken at least [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`]
//!   after the first reading, so CPU figures are never a bogus 0 or 100.
//!
//! `disk` is `(total - available) / total` of the filesystem, as `df`
//! computes from `f_blocks` and `f_bavail` (root-reserved blocks count as
//! used). An application with no running process is reported with
//! `up: false` and zero CPU and memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use o1_common::Timestamp;
use o1_common::wire::MetricSample;
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind,
    ProcessesToUpdate, System,
};

use crate::config::ApplicationConfig;

#[derive(Debug, Clone)]
enum Matcher {
    ProcessName(String),
    Cmdline(String),
    SystemdUnit(String),
    Nothing,
}

#[derive(Debug)]
struct AppProbe {
    name: String,
    matcher: Matcher,
    disk: Option<usize>,
    pids: Vec<Pid>,
}

#[derive(Debug)]
pub struct Sampler {
    system: System,
    /// Previous (received, sent) byte totals of non-loopback interfaces.
    network_totals: Option<(u64, u64)>,
    network_buffer: String,
    disks: Disks,
    host_disk: Option<usize>,
    apps: Vec<AppProbe>,
    cores: f64,
    last_network: Instant,
    last_discovery: Option<Instant>,
    discovery_interval: std::time::Duration,
    pid_buffer: Vec<Pid>,
    /// PIDs seen in `/proc`, and the applications each one matched.
    examined: std::collections::HashMap<u32, Vec<usize>>,
}

fn disk_for(disks: &Disks, path: &Path) -> Option<usize> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    disks
        .iter()
        .enumerate()
        .filter(|(_, disk)| path.starts_with(disk.mount_point()))
        .max_by_key(|(_, disk)| disk.mount_point().as_os_str().len())
        .map(|(index, _)| index)
}

/// Received and sent bytes summed over non-loopback interfaces, from one
/// read of `/proc/net/dev`. (sysinfo's `Networks` reads several sysfs files
/// per interface each time; this is one file, and the agent's cost is the
/// first requirement.)
fn read_network_totals(buffer: &mut String) -> Option<(u64, u64)> {
    use std::io::Read;
    buffer.clear();
    std::fs::File::open("/proc/net/dev")
        .ok()?
        .read_to_string(buffer)
        .ok()?;
    Some(parse_net_dev(buffer))
}

fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let mut fields = counters.split_whitespace();
            let received: u64 = fields.next()?.parse().ok()?;
            let sent: u64 = fields.nth(7)?.parse().ok()?;
            Some((received, sent))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

/// PIDs in a systemd unit's cgroup (cgroup v2, then v1's systemd hierarchy).
fn unit_pids(unit: &str, out: &mut Vec<Pid>) {
    let unit = if unit.contains('.') {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    };
    let candidates = [
        PathBuf::from(format!("/sys/fs/cgroup/system.slice/{unit}/cgroup.procs")),
        PathBuf::from(format!(
            "/sys/fs/cgroup/systemd/system.slice/{unit}/cgroup.procs"
        )),
    ];
    for path in candidates {
        if let Ok(text) = std::fs::read_to_string(&path) {
            out.extend(
                text.lines()
                    .filter_map(|l| l.trim().parse::<usize>().ok())
                    .map(Pid::from),
            );
            return;
        }
    }
}

impl Sampler {
    pub fn new(
        disk_path: &Path,
        applications: &[ApplicationConfig],
        discovery_interval: std::time::Duration,
    ) -> Result<Self, sysinfo::Error> {
        let mut system = System::new()?;
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        let disks =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage())?;
        let host_disk = disk_for(&disks, disk_path);
        let apps = applications
            .iter()
            .map(|app| AppProbe {
                name: app.name.clone(),
                matcher: match (&app.systemd_unit, &app.process_name, &app.cmdline) {
                    (Some(unit), _, _) => Matcher::SystemdUnit(unit.clone()),
                    (_, Some(name), _) => Matcher::ProcessName(name.clone()),
                    (_, _, Some(pattern)) => Matcher::Cmdline(pattern.clone()),
                    _ => Matcher::Nothing,
                },
                disk: app
                    .data_dir
                    .as_deref()
                    .and_then(|dir| disk_for(&disks, dir)),
                pids: Vec::new(),
            })
            .collect();
        let cores = system.cpus().len().max(1) as f64;
        let mut sampler = Sampler {
            system,
            network_totals: None,
            network_buffer: String::new(),
            disks,
            host_disk,
            apps,
            cores,
            last_network: Instant::now(),
            last_discovery: None,
            discovery_interval,
            pid_buffer: Vec::new(),
            examined: std::collections::HashMap::new(),
        };
        sampler.refresh_processes();
        Ok(sampler)
    }

    /// Finds the processes of name and command-line matchers. Each PID is
    /// examined once, when it first appears in `/proc` (its `comm`, and its
    /// `cmdline` if a matcher needs it); later scans only list `/proc`. A
    /// full sysinfo refresh re-reads several files of every process on each
    /// scan, which dominated the agent's cost.
    fn discover(&mut self) {
        let needs_scan = self
            .apps
            .iter()
            .any(|a| matches!(a.matcher, Matcher::ProcessName(_) | Matcher::Cmdline(_)));
        if !needs_scan {
            return;
        }
        let wants_cmd = self
            .apps
            .iter()
            .any(|a| matches!(a.matcher, Matcher::Cmdline(_)));
        let own = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut alive: Vec<u32> = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            alive.push(pid);
            if pid == own || self.examined.contains_key(&pid) {
                continue;
            }
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let name = name.trim_end_matches('\n');
            let cmdline = if wants_cmd {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| {
                        let text = String::from_utf8_lossy(&raw).replace('\0', " ");
                        text.trim_end().to_owned()
                    })
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let matching: Vec<usize> = self
                .apps
                .iter()
                .enumerate()
                .filter(|(_, app)| match &app.matcher {
                    Matcher::ProcessName(wanted) => name == wanted,
                    Matcher::Cmdline(pattern) => cmdline.contains(pattern.as_str()),
                    _ => false,
                })
                .map(|(index, _)| index)
                .collect();
            self.examined.insert(pid, matching);
        }
        alive.sort_unstable();
        self.examined
            .retain(|pid, _| alive.binary_search(pid).is_ok());
        for (index, app) in self.apps.iter_mut().enumerate() {
            if matches!(app.matcher, Matcher::ProcessName(_) | Matcher::Cmdline(_)) {
                app.pids.clear();
                app.pids.extend(
                    self.examined
                        .iter()
                        .filter(|(_, apps)| apps.contains(&index))
                        .map(|(pid, _)| Pid::from_u32(*pid)),
                );
            }
        }
        self.last_discovery = Some(Instant::now());
    }

    fn refresh_processes(&mut self) {
        let due = self
            .last_discovery
            .is_none_or(|at| at.elapsed() >= self.discovery_interval);
        let vanished = self
            .apps
            .iter()
            .any(|a| a.pids.iter().any(|pid| self.system.process(*pid).is_none()));
        if due || vanished {
            self.discover();
        }
        for app in &mut self.apps {
            if let Matcher::SystemdUnit(unit) = &app.matcher {
                app.pids.clear();
                unit_pids(unit, &mut app.pids);
            }
        }
        self.pid_buffer.clear();
        self.pid_buffer
            .extend(self.apps.iter().flat_map(|a| a.pids.iter().copied()));
        if !self.pid_buffer.is_empty() {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&self.pid_buffer),
                true,
                ProcessRefreshKind::nothing()
                    .without_tasks()
                    .with_cpu()
                    .with_memory(),
            );
        }
    }

    /// One sample of the host (`system`) and of every application.
    pub fn sample(&mut self) -> Vec<MetricSample> {
        let timestamp_ms = Timestamp::now().unix_millis;
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let totals = read_network_totals(&mut self.network_buffer);
        let elapsed = self.last_network.elapsed().as_secs_f64().max(0.001);
        self.last_network = Instant::now();
        let (rx, tx) = match (totals, self.network_totals) {
            (Some((rx, tx)), Some((prx, ptx))) => (rx.saturating_sub(prx), tx.saturating_sub(ptx)),
            _ => (0, 0),
        };
        self.network_totals = totals;
        let mut wanted: Vec<usize> = self
            .apps
            .iter()
            .filter_map(|a| a.disk)
            .chain(self.host_disk)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        for index in &wanted {
            if let Some(disk) = self.disks.get_mut(*index) {
                disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
            }
        }
        self.refresh_processes();

        let total_memory = self.system.total_memory().max(1);
        let disk_usage = |index: Option<usize>| {
            let disk = self.disks.get(index?)?;
            let total = disk.total_space();
            (total > 0).then(|| {
                let used = total.saturating_sub(disk.available_space());
                (used as f64 / total as f64 * 100.0, used)
            })
        };
        let used_memory = self.system.used_memory();
        let host_disk = disk_usage(self.host_disk);
        let mut samples = Vec::with_capacity(self.apps.len() + 1);
        samples.push(MetricSample {
            application: "system".into(),
            timestamp_ms,
            up: true,
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_percent: used_memory as f64 / total_memory as f64 * 100.0,
            memory_bytes: used_memory,
            disk_percent: host_disk.map(|d| d.0),
            disk_bytes: host_disk.map(|d| d.1),
            network: Some((rx as f64 / elapsed, tx as f64 / elapsed)),
        });
        for app in &self.apps {
            let (cpu, memory, alive) = app
                .pids
                .iter()
                .filter_map(|pid| self.system.process(*pid))
                .fold((0.0f64, 0u64, 0usize), |(cpu, memory, alive), p| {
                    (
                        cpu + f64::from(p.cpu_usage()),
                        memory + p.memory(),
                        alive + 1,
                    )
                });
            let disk = disk_usage(app.disk);
            samples.push(MetricSample {
                application: app.name.clone(),
                timestamp_ms,
                up: alive > 0,
                cpu_percent: cpu / self.cores,
                memory_percent: memory as f64 / total_memory as f64 * 100.0,
                memory_bytes: memory,
                disk_percent: disk.map(|d| d.0),
                disk_bytes: disk.map(|d| d.1),
                network: None,
            });
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n  eth0: 5000 50 0 0 0 0 0 0 7000 70 0 0 0 0 0 0\n  eth1: 1 1 0 0 0 0 0 0 2 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), (5001, 7002));
    }
}
