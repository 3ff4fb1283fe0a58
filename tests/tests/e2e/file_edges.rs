//! The file edges: inode reuse, rotation while the agent is down, kills
//! right after a rotation, stops in the middle of one. Every case checks
//! the exact sequence of line numbers: nothing lost, repeated or
//! reordered (issue: zero lines lost or repeated at the file edges).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use o1_tests::{Agent, WsClient, line_number};

use crate::tailing::{agent_config, assert_exactly, collect_until, numbered, setup};

/// A fixed first line longer than the fingerprint (256 bytes): every new
/// file starts with the same bytes, as files with a banner do.
fn header() -> String {
    format!("# fixed header {}\n", "=".repeat(300))
}

/// Fails if a numbered line arrives within `wait` (a new file's header
/// may).
async fn no_more_lines(client: &mut WsClient, wait: Duration) {
    while let Ok(message) = client.recv_json(wait).await {
        assert_eq!(
            line_number(&message),
            None,
            "extra line after the last: {message}"
        );
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Creates `path` on one of the inodes in `wanted` (freed before), holding
/// placeholder files while the filesystem hands out others, as a busy
/// host's filesystem would reuse them. Returns the inode it got.
fn create_reusing(path: &Path, wanted: &HashSet<u64>) -> u64 {
    let dir = path.parent().unwrap();
    let mut placeholders = Vec::new();
    let mut got = None;
    for n in 0..200 {
        let candidate = dir.join(format!(".placeholder-{n}"));
        File::create(&candidate).unwrap();
        if wanted.contains(&inode(&candidate)) {
            got = Some(candidate);
            break;
        }
        placeholders.push(candidate);
    }
    let chosen = got.unwrap_or_else(|| placeholders.pop().unwrap());
    std::fs::rename(&chosen, path).unwrap();
    for placeholder in placeholders {
        std::fs::remove_file(placeholder).unwrap();
    }
    inode(path)
}

fn append(path: &Path, from: u64, to: u64) {
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    let text: String = (from..to).map(numbered).collect();
    file.write_all(text.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_file_on_the_same_inode_with_the_same_header_is_read_from_its_start() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, header()).unwrap();
    append(&log, 0, 4000);
    let (mut agent, agent_dir, mut client) = s.agent_and_subscriber(&agent_config(&log, "")).await;
    let mut seen = collect_until(&mut client, 3999).await;
    tokio::task::block_in_place(|| agent.terminate(Duration::from_secs(10))).unwrap();

    // While the agent is stopped: rotate, delete, and create a new file
    // that gets the same inode and starts with the same header, then write
    // past the old size.
    let old = inode(&log);
    let old_size = std::fs::metadata(&log).unwrap().len();
    let rotated = s.log_dir.join("app.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::remove_file(&rotated).unwrap();
    let new = create_reusing(&log, &HashSet::from([old]));
    assert_eq!(new, old, "the test needs the inode back (stat says {new})");
    std::fs::write(&log, header()).unwrap();
    append(&log, 4000, 10_000);
    assert!(std::fs::metadata(&log).unwrap().len() > old_size);

    let agent = Agent::spawn(&agent_dir.join("agent.toml"), &agent_dir).unwrap();
    seen.extend(collect_until(&mut client, 9999).await);
    assert_exactly(&seen, 10_000);
    no_more_lines(&mut client, Duration::from_millis(1500)).await;
    assert!(
        agent.log().contains("reading it from its start"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_delete_and_inode_reuse_every_cycle_with_kills_repeats_nothing() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, header()).unwrap();
    let config = agent_config(&log, "");
    let (mut agent, agent_dir, mut client) = s.agent_and_subscriber(&config).await;
    let mut used: HashSet<u64> = HashSet::from([inode(&log)]);
    let mut reused = 0;
    let mut seen = Vec::new();
    let mut next = 0u64;
    for cycle in 0..14u64 {
        if cycle > 0 {
            let rotated = s.log_dir.join("app.log.1");
            std::fs::rename(&log, &rotated).unwrap();
            std::fs::remove_file(&rotated).unwrap();
            let got = create_reusing(&log, &used);
            if !used.insert(got) {
                reused += 1;
            }
            std::fs::write(&log, header()).unwrap();
        }
        // Cycles of different lengths, so a stale position of an earlier
        // life of an inode is never right for a later one by chance.
        let count = 300 + (cycle * 211) % 900;
        append(&log, next, next + count);
        next += count;
        seen.extend(collect_until(&mut client, next - 1).await);
        if cycle >= 5 && cycle % 2 == 1 {
            // Acknowledged and checkpointed, then killed.
            tokio::time::sleep(Duration::from_millis(400)).await;
            tokio::task::block_in_place(|| agent.kill_and_restart()).unwrap();
        } else {
            // The agent lets deleted files go after a quiet while; the
            // next files can then reuse their inodes.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
    }
    assert!(reused >= 3, "inodes were reused {reused} times");
    assert_exactly(&seen, next);
    no_more_lines(&mut client, Duration::from_millis(2000)).await;
    // The checkpoint forgets the deleted files once they are released: it
    // ends with the current file alone, not one entry per rotation.
    let checkpoint = agent_dir.join("state/checkpoint.json");
    let current = inode(&log);
    o1_tests::eventually(Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&checkpoint).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        let files = value["files"].as_array()?;
        (files.len() == 1 && files[0]["key"]["inode"] == current).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", std::fs::read_to_string(&checkpoint)));
}

/// Writes `total` lines at about 2,000 a second, rotating every
/// `every` lines like logrotate (`app.log.2` → `app.log.3`, `app.log.1` →
/// `app.log.2`, `app.log` → `app.log.1`, a new `app.log`). Tells `rotated`
/// right after each rename; the writer then goes on writing 300 lines
/// (150 ms) to the renamed file before it reopens its log, as an
/// application told by a postrotate signal does.
fn write_rotating(path: PathBuf, total: u64, every: u64, rotated: mpsc::Sender<u64>) {
    let open = |path: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    };
    let name = |k: u64| path.with_extension(format!("log.{k}"));
    let mut file = open(&path);
    let mut rotations = 0;
    let mut reopen_at = None;
    for n in 0..total {
        if n > 0 && n % every == 0 {
            for k in (1..=rotations.min(5)).rev() {
                let _ = std::fs::rename(name(k), name(k + 1));
            }
            std::fs::rename(&path, name(1)).unwrap();
            File::create(&path).unwrap();
            rotations += 1;
            let _ = rotated.send(rotations);
            reopen_at = Some(n + 300);
        }
        if reopen_at == Some(n) {
            file = open(&path);
            reopen_at = None;
        }
        file.write_all(numbered(n).as_bytes()).unwrap();
        if n % 2 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Starts [`write_rotating`] on its own thread: `total` lines, a rotation
/// every 3,000.
fn start_writing(log: &Path, total: u64) -> (std::thread::JoinHandle<()>, mpsc::Receiver<u64>) {
    let (tx, rx) = mpsc::channel();
    let log = log.to_owned();
    (
        std::thread::spawn(move || write_rotating(log, total, 3000, tx)),
        rx,
    )
}

/// Waits for the writer's next rotation; returns its number.
fn next_rotation(rotations: &mpsc::Receiver<u64>) -> u64 {
    tokio::task::block_in_place(|| rotations.recv_timeout(Duration::from_secs(20))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_just_after_rename_rotation_reads_the_rotated_file_after_restart() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    // The glob does not match rotated files, like /var/log/nginx/*.log.
    let config = agent_config(&s.log_dir.join("*.log"), "");
    let (mut agent, agent_dir, mut client) = s.agent_and_subscriber(&config).await;
    let total = 16_000;
    let (writer, rotations) = start_writing(&log, total);
    for _ in 0..4 {
        next_rotation(&rotations);
        tokio::time::sleep(Duration::from_millis(50)).await;
        agent.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent = Agent::spawn(&agent_dir.join("agent.toml"), &agent_dir).unwrap();
    }
    let seen = collect_until(&mut client, total - 1).await;
    writer.join().unwrap();
    assert_exactly(&seen, total);
    no_more_lines(&mut client, Duration::from_millis(1500)).await;
}

/// SIGTERM during a rotation, two more rotations while the agent is
/// down, then a restart: with `glob`, every line once, in order.
async fn stopped_across_rotations(glob: &str) {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let config = agent_config(&s.log_dir.join(glob), "");
    let (mut agent, agent_dir, mut client) = s.agent_and_subscriber(&config).await;
    let total = 16_000;
    let (writer, rotations) = start_writing(&log, total);
    let rotation = || next_rotation(&rotations);
    rotation();
    assert_eq!(rotation(), 2);
    let status = tokio::task::block_in_place(|| agent.terminate(Duration::from_secs(10))).unwrap();
    assert!(status.success(), "stopped cleanly: {status:?}");
    assert_eq!(rotation(), 3);
    assert_eq!(rotation(), 4);
    let agent = Agent::spawn(&agent_dir.join("agent.toml"), &agent_dir).unwrap();
    let seen = collect_until(&mut client, total - 1).await;
    writer.join().unwrap();
    assert_exactly(&seen, total);
    no_more_lines(&mut client, Duration::from_millis(1500)).await;
    assert!(!agent.log().contains("are lost"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_across_two_rotations_with_a_glob_of_current_files_only() {
    stopped_across_rotations("*.log").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_across_two_rotations_with_a_glob_that_matches_rotated_files() {
    stopped_across_rotations("app.log*").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_file_compressed_while_the_agent_was_down_is_reported() {
    let s = setup();
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let config = agent_config(&s.log_dir.join("*.log"), "");
    let (mut agent, agent_dir, mut client) = s.agent_and_subscriber(&config).await;
    append(&log, 0, 100);
    collect_until(&mut client, 99).await;
    tokio::task::block_in_place(|| agent.terminate(Duration::from_secs(10))).unwrap();
    // Down: 50 more lines, then logrotate with compress (no delaycompress).
    append(&log, 100, 150);
    std::fs::remove_file(&log).unwrap();
    // Only its name matters: compressed files are not read.
    std::fs::write(s.log_dir.join("app.log.1.gz"), b"\x1f\x8b").unwrap();
    std::fs::write(&log, "").unwrap();
    append(&log, 150, 200);
    let agent = Agent::spawn(&agent_dir.join("agent.toml"), &agent_dir).unwrap();
    let seen = collect_until(&mut client, 199).await;
    assert_eq!(seen, (150..200).collect::<Vec<u64>>(), "the new file, once");
    let log = o1_tests::eventually(Duration::from_secs(10), || async {
        let log = agent.log();
        log.contains("are lost").then_some(log)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", agent.log()));
    assert!(log.contains("app.log.1.gz"), "{log}");
}
