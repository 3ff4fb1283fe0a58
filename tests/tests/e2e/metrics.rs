//! Host and application metrics (issue: agent metrics).

use std::process::{Child, Command};
use std::time::Duration;

use o1_tests::{Agent, Pki, Relay, WsClient, binary};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

/// Kills the whole process group (the shell and its `sleep`) when dropped,
/// so no orphan keeps the test runner's output open.
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// A process whose command line carries `marker`: busy or sleeping.
fn spawn_marked(marker: &str, busy: bool) -> Kill {
    use std::os::unix::process::CommandExt;
    let script = if busy {
        "while :; do :; done"
    } else {
        "sleep 600; :"
    };
    Kill(
        Command::new("sh")
            .args(["-c", script, marker])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    )
}

/// (MemTotal - MemAvailable) / MemTotal in percent, from /proc/meminfo.
fn kernel_memory_percent() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("MemTotal:") - field("MemAvailable:")) / field("MemTotal:") * 100.0
}

/// (size - avail) / size in percent of `/`, from statvfs (via `df`).
fn kernel_disk_percent() -> f64 {
    let output = Command::new("df")
        .args(["-B1", "--output=size,avail", "/"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let numbers: Vec<f64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (numbers[0] - numbers[1]) / numbers[0] * 100.0
}

/// Busy and idle jiffies of all CPUs, from /proc/stat.
fn kernel_cpu_jiffies() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap();
    let values: Vec<f64> = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let idle = values[3] + values[4];
    let total: f64 = values.iter().take(8).sum();
    (total - idle, total)
}

async fn next_sample(client: &mut WsClient, application: &str) -> Value {
    let seen = client
        .recv_until(T, |m| {
            m["type"] == "metrics" && m["application"] == application
        })
        .await
        .unwrap();
    seen.last().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn values_agree_with_the_kernel_and_applications_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &pki, "").unwrap();
    let burner_marker = format!("o1-burner-{}", std::process::id());
    let sleeper_marker = format!("o1-sleeper-{}", std::process::id());
    let _burner = spawn_marked(&burner_marker, true);
    let _sleeper = spawn_marked(&sleeper_marker, false);
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let extra = format!(
        "[metrics]\ninterval_ms = 500\ndiscovery_interval_secs = 1\n\n\
         [[application]]\nname = \"burner\"\ncmdline = \"{burner_marker}\"\ndata_dir = \"{}\"\n\n\
         [[application]]\nname = \"sleeper\"\ncmdline = \"{sleeper_marker}\"\n\n\
         [[application]]\nname = \"stopped\"\ncmdline = \"o1-no-such-process-{}\"\n",
        data_dir.display(),
        std::process::id()
    );
    let _agent = Agent::start_listed(
        &dir.path().join("agent"),
        &pki,
        &relay,
        "metrics-host",
        &extra,
    )
    .await
    .unwrap();
    let mut client = WsClient::connect(&relay.ws_url()).await.unwrap();
    client
        .subscribe(json!({"type": "subscribe-metrics", "host": "metrics-host"}))
        .await
        .unwrap();

    // Host: memory and disk as the kernel counts them.
    let system = next_sample(&mut client, "system").await;
    let memory = system["memory"].as_f64().unwrap();
    assert!(
        (memory - kernel_memory_percent()).abs() < 3.0,
        "memory {memory}% vs kernel {}%",
        kernel_memory_percent()
    );
    assert!(system["memoryBytes"].as_u64().unwrap() > 0);
    let disk = system["disk"].as_f64().unwrap();
    assert!(
        (disk - kernel_disk_percent()).abs() < 0.5,
        "disk {disk}% vs statvfs {}%",
        kernel_disk_percent()
    );
    assert!(system["network"]["txBytesPerSecond"].as_f64().unwrap() >= 0.0);

    // Host CPU over a few samples against /proc/stat over the same time.
    let (busy_before, total_before) = kernel_cpu_jiffies();
    let mut agent_cpu = Vec::new();
    for _ in 0..4 {
        agent_cpu.push(
            next_sample(&mut client, "system").await["cpu"]
                .as_f64()
                .unwrap(),
        );
    }
    let (busy_after, total_after) = kernel_cpu_jiffies();
    let kernel_cpu = (busy_after - busy_before) / (total_after - total_before) * 100.0;
    let mean = agent_cpu.iter().sum::<f64>() / agent_cpu.len() as f64;
    assert!(
        (mean - kernel_cpu).abs() < 25.0,
        "cpu {mean}% vs /proc/stat {kernel_cpu}%"
    );
    assert!(
        mean > 30.0,
        "a busy loop on one of the cores shows: {mean}%"
    );

    // Applications: the busy one high, the sleeping one near zero, the
    // missing one down.
    let burner = next_sample(&mut client, "burner").await;
    let burner = if burner["cpu"].as_f64().unwrap() < 1.0 {
        next_sample(&mut client, "burner").await
    } else {
        burner
    };
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    assert!(
        burner["cpu"].as_f64().unwrap() > 60.0 / cores,
        "busy app cpu: {burner}"
    );
    assert_eq!(burner["up"], true);
    assert!(burner["memoryBytes"].as_u64().unwrap() > 0);
    assert!(
        (burner["disk"].as_f64().unwrap() - kernel_disk_percent()).abs() < 0.5,
        "data dir disk"
    );
    let sleeper = next_sample(&mut client, "sleeper").await;
    assert!(
        sleeper["cpu"].as_f64().unwrap() < 5.0,
        "sleeping app cpu: {sleeper}"
    );
    assert_eq!(sleeper["up"], true);
    let stopped = next_sample(&mut client, "stopped").await;
    assert_eq!(stopped["up"], false, "{stopped}");
    assert_eq!(stopped["cpu"], 0.0);
}

#[test]
fn an_invalid_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("colour = \"blue\"\n", "colour"),
        ("[metrics]\ninterval_ms = 50\n", "metrics.interval_ms"),
        ("[metrics]\ninterval_ms = \"often\"\n", "interval_ms"),
        ("[[application]]\nlogs = [\"/var/log/x.log\"]\n", "name"),
        ("[[application]]\nname = \"\"\n", "application[0].name"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let output = Command::new(binary("o1-agent"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(key),
            "{text:?}: `{stderr}` does not name `{key}`"
        );
    }
    // An override by flag is checked the same way.
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "").unwrap();
    let output = Command::new(binary("o1-agent"))
        .arg("--config")
        .arg(&path)
        .args(["--set", "metrics.interval_ms=10", "check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("metrics.interval_ms"));
}
