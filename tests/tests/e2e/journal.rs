//! journald as a log source, with real journal files written by
//! systemd-journal-remote from the Journal Export Format (no running
//! journald needed): levels, messages, timestamps, unit filters, restarts
//! and kills (issue: journald as a log source).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use o1_tests::{Agent, JournalEntry, WsClient, journal_append, line_number};
use serde_json::Value;

use crate::tailing::{T, assert_exactly, collect_until, setup};

/// 2023-11-14T22:13:20.123Z in microseconds.
const T0: u64 = 1_700_000_000_123_000;

fn config(journal: &Path, extra_apps: &str) -> String {
    format!(
        "[metrics]\nenabled = false\n\n[logs]\nstart_at = \"beginning\"\n\n[[application]]\nname = \"web\"\njournal = {{ units = [\"web\"], directory = \"{}\" }}\n\n{extra_apps}",
        journal.display()
    )
}

fn numbered_entry(n: u64) -> JournalEntry {
    JournalEntry::unit(
        "web.service",
        6,
        &format!("line {n:08} served GET /index.html 200"),
        T0 + n,
    )
}

/// Every message with a line number, until all of `numbers` arrived; fails
/// on a number outside them.
async fn collect_numbers(client: &mut WsClient, numbers: &[u64]) -> BTreeMap<u64, Value> {
    let mut got = BTreeMap::new();
    while got.len() < numbers.len() {
        let message = client
            .recv_json(T)
            .await
            .unwrap_or_else(|e| panic!("after {:?}: {e}", got.keys()));
        if let Some(n) = line_number(&message) {
            assert!(numbers.contains(&n), "unexpected {message}");
            assert!(got.insert(n, message).is_none(), "repeated {n}");
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_of_the_configured_units_arrive_with_level_message_and_time() {
    let s = setup();
    let journal = s.dir.path().join("journal");
    let cron = JournalEntry {
        unit: None,
        identifier: Some("api-cron".into()),
        priority: 5,
        message: b"line 00000003 cron job ran".to_vec(),
        realtime_us: T0 + 4,
    };
    let cron_info = JournalEntry {
        priority: 6,
        message: b"line 99999997 below the api's min_priority".to_vec(),
        ..cron.clone()
    };
    journal_append(
        &journal,
        &[
            JournalEntry::unit("web.service", 3, "line 00000000 ERROR disk full", T0),
            JournalEntry::unit("db.service", 3, "line 99999999 another unit", T0 + 1),
            JournalEntry::unit(
                "web.service",
                4,
                "line 00000001 slow request\n  at handler()\n  at main()",
                T0 + 2,
            ),
            JournalEntry {
                message: b"line 00000002 binary \xff\xfe payload".to_vec(),
                ..JournalEntry::unit("web.service", 1, "", T0 + 3)
            },
            JournalEntry::unit(
                "web.service",
                7,
                "line 99999998 debug is below info",
                T0 + 3,
            ),
            cron,
            cron_info,
        ],
    )
    .unwrap();
    let api = format!(
        "[[application]]\nname = \"api\"\njournal = {{ identifiers = [\"api-cron\"], min_priority = \"notice\", directory = \"{}\" }}\n",
        journal.display()
    );
    let (agent, _, mut client) = s.agent_and_subscriber(&config(&journal, &api)).await;
    let got = tokio::time::timeout(
        Duration::from_secs(15),
        collect_numbers(&mut client, &[0, 1, 2, 3]),
    )
    .await
    .unwrap_or_else(|_| panic!("agent: {}", agent.log()));
    let field = |n: u64, name: &str| got[&n][name].as_str().unwrap().to_owned();
    assert_eq!(field(0, "message"), "line 00000000 ERROR disk full");
    assert_eq!(field(0, "level"), "ERROR");
    assert_eq!(field(0, "application"), "web");
    assert!(
        field(0, "timestamp").starts_with("2023-11-14T22:13:20.123"),
        "the entry's time, not the read time: {}",
        field(0, "timestamp")
    );
    assert_eq!(
        field(1, "message"),
        "line 00000001 slow request\n  at handler()\n  at main()",
        "multi-line messages are kept whole"
    );
    assert_eq!(field(1, "level"), "WARNING");
    assert_eq!(
        field(2, "message"),
        "line 00000002 binary \u{fffd}\u{fffd} payload"
    );
    assert_eq!(field(2, "level"), "CRITICAL");
    assert_eq!(field(3, "application"), "api");
    assert_eq!(field(3, "level"), "INFO");

    // Appended while the agent follows: arrives live.
    journal_append(
        &journal,
        &[JournalEntry::unit(
            "web.service",
            6,
            "line 00000004 live",
            T0 + 9,
        )],
    )
    .unwrap();
    collect_numbers(&mut client, &[4]).await;
    // Nothing of another unit, below min_priority, or repeated.
    while let Ok(message) = client.recv_json(Duration::from_millis(1500)).await {
        assert_eq!(line_number(&message), None, "unexpected {message}");
    }
    assert!(!agent.log().contains("not available"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_written_while_the_agent_is_stopped_or_killed_arrive_once() {
    let s = setup();
    let journal = s.dir.path().join("journal");
    let entries = |from: u64, to: u64| (from..to).map(numbered_entry).collect::<Vec<_>>();
    journal_append(&journal, &entries(0, 500)).unwrap();
    let (mut agent, agent_dir, mut client) = s.agent_and_subscriber(&config(&journal, "")).await;
    let mut seen = collect_until(&mut client, 499).await;

    // Stopped: entries appended meanwhile arrive once after the restart.
    tokio::task::block_in_place(|| agent.terminate(Duration::from_secs(10))).unwrap();
    journal_append(&journal, &entries(500, 1000)).unwrap();
    agent = Agent::spawn(&agent_dir.join("agent.toml"), &agent_dir).unwrap();
    seen.extend(collect_until(&mut client, 999).await);

    // Killed mid-stream, three times, while entries keep coming.
    let writer = {
        let journal = journal.clone();
        std::thread::spawn(move || {
            for chunk in 0..20u64 {
                let from = 1000 + chunk * 150;
                journal_append(&journal, &entries(from, from + 150)).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| agent.kill_and_restart()).unwrap();
    }
    seen.extend(collect_until(&mut client, 3999).await);
    writer.join().unwrap();
    assert_exactly(&seen, 4000);
    while let Ok(message) = client.recv_json(Duration::from_millis(1500)).await {
        assert_eq!(line_number(&message), None, "extra {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_journal_the_agent_says_so_and_keeps_tailing_files() {
    let s = setup();
    let missing = s.dir.path().join("no-journal-here");
    let log = s.log_dir.join("app.log");
    std::fs::write(&log, "").unwrap();
    let files = format!(
        "[[application]]\nname = \"files\"\nlogs = [\"{}\"]\n",
        log.display()
    );
    let (agent, _, mut client) = s.agent_and_subscriber(&config(&missing, &files)).await;
    o1_tests::append_numbered(&log, 0, 3).unwrap();
    collect_until(&mut client, 2).await;
    let log = o1_tests::eventually(Duration::from_secs(5), || async {
        let log = agent.log();
        log.contains("journald is not available").then_some(log)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", agent.log()));
    assert_eq!(
        log.matches("journald is not available").count(),
        1,
        "said once: {log}"
    );
    assert!(log.contains("application=web"), "{log}");
}
