//! A watcher that follows the workload's keys through the faults, resuming
//! on another member from the revision after the last one it saw, and the
//! check of what it saw against the recorded history: ordered, without gaps
//! or duplicates, every acknowledged write at its revision, and nothing that
//! no client wrote.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvd_api::etcdserverpb::watch_client::WatchClient;
use kvd_api::etcdserverpb::watch_request::RequestUnion;
use kvd_api::etcdserverpb::{WatchCreateRequest, WatchRequest};
use kvd_api::mvccpb::event::EventType;
use tokio::sync::watch;

use crate::model::{Input, Output};
use crate::workload::{Recorded, parse_value};

/// One event as the watcher saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub rev: i64,
    pub key: Vec<u8>,
    /// The value put, or None for a delete.
    pub put: Option<u64>,
}

/// Watches the workload's prefix from `from` until it has seen revision
/// `*target` (set when the workload is over). Returns the events and how
/// many times it had to resume on another member.
pub async fn record(
    endpoints: Vec<String>,
    from: i64,
    mut target: watch::Receiver<i64>,
    progress: Arc<Mutex<String>>,
) -> (Vec<Seen>, usize) {
    let mut seen: Vec<Seen> = Vec::new();
    let mut resumes = 0;
    let mut at = 0;
    loop {
        let next = seen.last().map_or(from, |s| s.rev + 1);
        if next > *target.borrow() {
            return (seen, resumes);
        }
        let ch = tonic::transport::Channel::from_shared(endpoints[at].clone())
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        *progress.lock().unwrap() =
            format!("watching on {} from revision {next} ({} events so far)", endpoints[at], seen.len());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchCreateRequest {
            key: b"rb/".to_vec(),
            range_end: b"rb0".to_vec(),
            start_revision: next,
            ..Default::default()
        };
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
        let mut client = WatchClient::new(ch);
        let call = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), call).await {
            let mut stream = resp.into_inner();
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = target.changed() => {
                        if seen.last().is_some_and(|s| s.rev >= *target.borrow()) { break }
                        continue;
                    }
                };
                let Ok(Some(r)) = msg else { break };
                assert!(r.compact_revision == 0 && !r.canceled, "the watch was canceled: {r:?}");
                if let Some(e) = r.events.last() {
                    let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    *progress.lock().unwrap() = format!("watching on {}: last event at revision {rev}", endpoints[at]);
                }
                for e in r.events {
                    let kv = e.kv.unwrap_or_default();
                    let put = (e.r#type == EventType::Put as i32).then(|| parse_value(&kv.value));
                    seen.push(Seen { rev: kv.mod_revision, key: kv.key, put });
                }
                if seen.last().is_some_and(|s| s.rev >= *target.borrow()) {
                    break;
                }
            }
        }
        drop(tx);
        if seen.last().is_some_and(|s| s.rev >= *target.borrow()) {
            return (seen, resumes);
        }
        resumes += 1;
        at = (at + 1) % endpoints.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the watched events against the history; `from..=to` are the
/// revisions the workload made.
pub fn check(seen: &[Seen], history: &[Recorded], from: i64, to: i64) -> Result<usize, String> {
    for (i, s) in seen.iter().enumerate() {
        let want = from + i as i64;
        if s.rev != want {
            return Err(format!("event {i} has revision {} where {want} was due (gap, duplicate or disorder)", s.rev));
        }
    }
    let last = seen.last().map_or(from - 1, |s| s.rev);
    if last != to {
        return Err(format!("the watcher's last revision is {last}, the store's is {to}"));
    }
    let by_rev: HashMap<i64, &Seen> = seen.iter().map(|s| (s.rev, s)).collect();
    let key = |k: usize| crate::workload::key_name(k);
    // Every acknowledged change appears at its revision.
    let mut acknowledged = 0;
    for r in history {
        let (want_put, rev) = match (&r.op.input, &r.op.output) {
            (Input::Put { value, .. }, Output::Put { rev }) => (Some(*value), *rev),
            (Input::Cas { value, .. }, Output::Cas { succeeded: true, rev, .. }) => (Some(*value), *rev),
            (Input::Delete, Output::Delete { deleted: true, rev }) => (None, *rev),
            _ => continue,
        };
        acknowledged += 1;
        match by_rev.get(&rev) {
            Some(s) if s.key == key(r.key) && s.put == want_put => {}
            other => {
                return Err(format!(
                    "acknowledged {:?} -> {:?} on key {} is not in the watch: {other:?}",
                    r.op.input, r.op.output, r.key
                ));
            }
        }
    }
    // Every event comes from an operation some client ran.
    let mut puts: HashMap<u64, &Recorded> = HashMap::new();
    let mut deletes: HashMap<Vec<u8>, Vec<&Recorded>> = HashMap::new();
    for r in history {
        match &r.op.input {
            Input::Put { value, .. } | Input::Cas { value, .. } => {
                puts.insert(*value, r);
            }
            Input::Delete | Input::Revoke { .. } => deletes.entry(key(r.key)).or_default().push(r),
            Input::Get => {}
        }
    }
    for s in seen {
        let ok = match s.put {
            Some(v) => puts.get(&v).is_some_and(|r| {
                key(r.key) == s.key
                    && match r.op.output {
                        Output::Put { rev } | Output::Cas { rev, succeeded: true, .. } => rev == s.rev,
                        Output::Unknown => true,
                        _ => false,
                    }
            }),
            None => deletes.get(&s.key).is_some_and(|ops| {
                ops.iter().any(|r| match r.op.output {
                    Output::Delete { deleted: true, rev } | Output::Revoke { rev } => rev == s.rev,
                    Output::Unknown => true,
                    _ => false,
                })
            }),
        };
        if !ok {
            return Err(format!("watched event {s:?} matches no operation of the history"));
        }
    }
    Ok(acknowledged)
}
