//! Host and per-application metrics, sampled with sysinfo at the lowest
//! cost we could find:
//!
//! - only what is reported is refreshed (CPU usage, RAM, the disks that
//!   matter, network counters): never `refresh_all`;
//! - an application's processes come from its systemd unit's cgroup
//!   (`cgroup.procs`, exact and cheap) or, for name and command-line
//!   matchers, from a listing of `/proc` every `discovery_interval_secs`
//!   (or when a known process vanished) in which each PID is examined once;
//!   each known PID costs one read of `/proc/PID/stat` per sample (sysinfo
//!   serves the host-wide figures and disks);
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
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Pid, System};

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
    /// PIDs seen in `/proc`, and the applications each one matched.
    examined: std::collections::HashMap<u32, Vec<usize>>,
    /// CPU ticks of each measured PID at its previous sample.
    last_ticks: std::collections::HashMap<u32, (u64, Instant)>,
    /// A measured PID was gone: find the processes again.
    vanished: bool,
    stat_buffer: String,
    page_size: u64,
    ticks_per_second: f64,
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

/// (utime + stime in clock ticks, resident pages) from `/proc/PID/stat`.
fn read_proc_stat(pid: u32, buffer: &mut String) -> Option<(u64, u64)> {
    use std::io::Read;
    buffer.clear();
    std::fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read_to_string(buffer)
        .ok()?;
    parse_proc_stat(buffer)
}

/// Fields after the command name (which may contain spaces and parens):
/// state is field 3, utime 14, stime 15, rss 24.
fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss: u64 = fields.get(21)?.parse().ok()?;
    Some((utime + stime, rss))
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn ticks_per_second() -> f64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        ticks => ticks as f64,
    }
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
            examined: std::collections::HashMap::new(),
            last_ticks: std::collections::HashMap::new(),
            vanished: false,
            stat_buffer: String::new(),
            page_size: page_size(),
            ticks_per_second: ticks_per_second(),
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
        if due || self.vanished {
            self.discover();
            self.vanished = false;
        }
        for app in &mut self.apps {
            if let Matcher::SystemdUnit(unit) = &app.matcher {
                app.pids.clear();
                unit_pids(unit, &mut app.pids);
            }
        }
    }

    /// CPU (% of all cores since the previous sample) and resident bytes of
    /// `pids`, and how many of them are alive, from one read of
    /// `/proc/PID/stat` each. (sysinfo also reads `status`, `statm` and the
    /// process directory each time; `status` is costly for the kernel to
    /// produce, and this runs every second on every host.)
    fn measure(&mut self, pids: &[Pid], now: Instant) -> (f64, u64, usize) {
        let (mut cpu, mut memory, mut alive) = (0.0, 0u64, 0usize);
        for pid in pids {
            let pid = pid.as_u32();
            let Some((ticks, rss_pages)) = read_proc_stat(pid, &mut self.stat_buffer) else {
                self.vanished = true;
                self.last_ticks.remove(&pid);
                continue;
            };
            alive += 1;
            memory += rss_pages * self.page_size;
            if let Some((previous, at)) = self.last_ticks.insert(pid, (ticks, now)) {
                let seconds = now.saturating_duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    let used = ticks.saturating_sub(previous) as f64 / self.ticks_per_second;
                    cpu += used / seconds / self.cores * 100.0;
                }
            }
        }
        (cpu, memory, alive)
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
        let now = Instant::now();
        let mut measured = Vec::with_capacity(self.apps.len());
        for index in 0..self.apps.len() {
            let pids = std::mem::take(&mut self.apps[index].pids);
            measured.push(self.measure(&pids, now));
            self.apps[index].pids = pids;
        }
        let live: std::collections::HashSet<u32> = self
            .apps
            .iter()
            .flat_map(|a| a.pids.iter().map(|p| p.as_u32()))
            .collect();
        self.last_ticks.retain(|pid, _| live.contains(pid));
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
        for (app, (cpu, memory, alive)) in self.apps.iter().zip(measured) {
            let disk = disk_usage(app.disk);
            samples.push(MetricSample {
                application: app.name.clone(),
                timestamp_ms,
                up: alive > 0,
                cpu_percent: cpu,
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
    fn proc_stat_fields_survive_odd_command_names() {
        let text = "1234 (my (odd) app) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 12345 1000000 321 18446744073709551615";
        assert_eq!(parse_proc_stat(text), Some((300, 321)));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n  eth0: 5000 50 0 0 0 0 0 0 7000 70 0 0 0 0 0 0\n  eth1: 1 1 0 0 0 0 0 0 2 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), (5001, 7002));
    }
}
