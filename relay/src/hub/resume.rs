//! `subscribe-logs` with `since`: every matching line after the client's
//! offset, read from the history log on disk, then live, with no gap and
//! no repeat at the seam.
//!
//! The replay runs before the subscription exists while it is far behind
//! (no live line can pile up meanwhile), paced by the connection's queue:
//! it waits while the queue is over half full, so a slow client slows its
//! own replay and never drops it. Once within [`CATCH_UP`] offsets of the
//! end, the subscription registers with a closed gate and reads `cut` (the
//! log's next offset) under the index lock; lines below `cut` come from
//! disk, lines from `cut` on through the gate. Disk reads run on the
//! blocking pool with their own file handles: ingest never waits for them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use o1_common::Timestamp;
use o1_common::api::{Gap, ServerMessage, Since, SubscribeLogs};
use o1_common::matching::LogFilter;

use super::outbound::{Outbound, Outgoing, subscription_name};
use super::{Hub, ReplayGate, SubscriptionHandle, Visible};
use crate::journal::Reader;

/// How far behind the end a replay may be when it switches to live.
pub const CATCH_UP: u64 = 1024;
/// Records read from disk per step. A record is one agent batch, at most
/// `uplink.max_frame_bytes` (4 MiB), so a replaying connection holds at
/// most 4 of them (16 MiB) besides its queue; typical batches are far
/// smaller.
const CHUNK_RECORDS: usize = 4;

fn gap(outbound: &Outbound, id: u64) {
    let message = ServerMessage::Gap(Gap {
        subscription_id: subscription_name(id),
        missed: None,
        timestamp: Timestamp::now(),
    });
    outbound.push_reply(Outgoing {
        subscription: id,
        body: Bytes::from(message.to_json()),
        ingested_at: None,
    });
}

/// Waits until the connection's queue is at most half full.
async fn room(outbound: &Outbound) {
    while !outbound.has_room() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Replays the matching lines of offsets `from..to`; returns the reader
/// (to go on from `to`) or `None` when the log lost the segment under it.
/// Where replayed lines go.
struct Target<'a> {
    hub: &'a Arc<Hub>,
    filter: &'a LogFilter,
    scope: &'a Visible,
    outbound: &'a Arc<Outbound>,
    id: u64,
}

async fn replay(target: &Target<'_>, mut reader: Reader, from: u64, to: u64) -> Option<Reader> {
    let Target {
        hub,
        filter,
        scope,
        outbound,
        id,
    } = *target;
    loop {
        room(outbound).await;
        let (back, records) = reader.next_chunk(to, CHUNK_RECORDS).await;
        let (Some(back), Ok(records)) = (back, records) else {
            gap(outbound, id);
            return None;
        };
        reader = back;
        let done = records.is_empty();
        let lines = hub.replay_lines(&records, from, filter, scope);
        for body in lines {
            // Never more than the queue takes: a long replay waits for
            // the client instead of dropping lines.
            if !outbound.has_room() {
                room(outbound).await;
            }
            outbound.push_log(Outgoing {
                subscription: id,
                body,
                ingested_at: None,
            });
        }
        if done {
            return Some(reader);
        }
    }
}

/// Subscribes to logs from `since` on (see the module's comment).
pub async fn subscribe_logs_since(
    hub: &Arc<Hub>,
    request: &SubscribeLogs,
    since: Since,
    scope: Visible,
    outbound: &Arc<Outbound>,
    ack: impl FnOnce(u64) -> Outgoing,
) -> SubscriptionHandle {
    let id = hub.new_subscription_id();
    let filter = hub.log_filter(request);
    outbound.push_reply(ack(id));
    let Some(oldest) = hub.oldest_offset().await else {
        gap(outbound, id);
        return hub.register_logs(id, &filter, scope, outbound, None, None);
    };
    let start = if since.epoch != hub.epoch() || since.offset.saturating_add(1) < oldest {
        // Another history, or older than what is held: say so, then
        // replay everything still held.
        gap(outbound, id);
        oldest
    } else {
        since.offset.saturating_add(1)
    };
    let mut position = start;
    let mut reader = hub.reader(position).await;
    let target = Target {
        hub,
        filter: &filter,
        scope: &scope,
        outbound,
        id,
    };
    // Far behind: catch up without a subscription.
    while let Some(current) = reader.take() {
        let end = hub.log_end();
        if end <= position.saturating_add(CATCH_UP) {
            reader = Some(current);
            break;
        }
        reader = replay(&target, current, position, end).await;
        position = end;
    }
    // The seam: below `cut` from disk, from `cut` on through the gate. A
    // gate that fills while its replay runs (a fast agent) notes where;
    // that stretch is read from disk too, with a fresh gate, until one
    // opens whole.
    let gate = ReplayGate::lossless();
    let (handle, mut cut) =
        hub.register_logs_at_cut(id, &filter, scope.clone(), outbound, gate.clone());
    let mut gate = gate;
    loop {
        if let Some(current) = reader.take()
            && position < cut
        {
            // Read to `cut`; a lost segment was announced with `gap`.
            let _ = replay(&target, current, position, cut).await;
        }
        let Some(overflow) = Hub::open_gate_lossless(&gate, cut, outbound) else {
            hub.ungate(&handle, &gate);
            break;
        };
        let (fresh, next_cut) = hub.regate(&handle);
        position = overflow;
        reader = hub.reader(position).await;
        if reader.is_none() {
            gap(outbound, id);
        }
        gate = fresh;
        cut = next_cut;
    }
    handle
}
