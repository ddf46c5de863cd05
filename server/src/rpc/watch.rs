//! The Watch service: one bidirectional stream carries many watchers. The
//! receive half creates and cancels watchers in the hub and asks for progress;
//! the send half turns the hub's messages into etcd's responses (reading
//! previous values for `prev_kv` watchers and fragmenting large responses).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kvd_api::etcdserverpb::watch_create_request::FilterType;
use kvd_api::etcdserverpb::watch_request::RequestUnion;
use kvd_api::etcdserverpb::watch_server::Watch;
use kvd_api::etcdserverpb::{WatchRequest, WatchResponse};
use kvd_api::mvccpb::Event;
use kvd_api::mvccpb::event::EventType;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::etcdserver::EtcdServer;
use crate::mvcc::{RangeEnd, RangeOptions};
use crate::watch::{StreamId, WatchHub, WatchMsg, WatchSpec};

/// Messages buffered per stream before its watchers fall behind and catch up
/// from the backend instead (etcd's chanBufLen).
const STREAM_BUFFER: usize = 128;

pub struct WatchService {
    pub server: Arc<EtcdServer>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        let creds = super::auth_info(&req);
        let mut inbound = req.into_inner();
        let ranges: Ranges = Default::default();
        let hub = self.server.watch_hub().clone();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = hub.open_stream(tx.clone());
        let server = self.server.clone();
        let (c, r) = (creds.clone(), ranges.clone());
        tokio::spawn(async move {
            // The client closing its side ends the whole stream, as in etcd; so
            // does the response side going away (a client whose request side
            // never ends, such as the JSON gateway's, is gone then).
            loop {
                let req = tokio::select! {
                    r = inbound.message() => r,
                    _ = tx.closed() => break,
                };
                let Ok(Some(req)) = req else { break };
                if handle(&server, &hub, stream, &tx, req, &c, &r).await.is_err() {
                    break;
                }
            }
            hub.close_stream(stream);
        });
        let server = self.server.clone();
        let hub = self.server.watch_hub().clone();
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
            .map(move |msg| {
                let msg = recheck(&server, &hub, stream, &creds, &ranges, msg);
                futures::stream::iter(responses(&server, msg).into_iter().map(Ok))
            })
            .flatten();
        Ok(Response::new(Box::pin(out)))
    }
}

/// The watched ranges of a stream, by watch id, and the auth revision at
/// which each was last found permitted.
type Ranges = Arc<parking_lot::Mutex<std::collections::HashMap<i64, (Vec<u8>, Vec<u8>, u64)>>>;

/// etcd's cancel reason for a watch without read permission.
const PERMISSION_DENIED: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// Before events go out: if auth changed since the watcher was last checked,
/// check again; a watcher that lost read permission is canceled instead.
fn recheck(
    server: &EtcdServer,
    hub: &WatchHub,
    stream: StreamId,
    creds: &crate::etcdserver::kv::Credentials,
    ranges: &Ranges,
    msg: WatchMsg,
) -> WatchMsg {
    let WatchMsg::Events { watch_id, .. } = &msg else { return msg };
    let rev = server.auth_revision();
    let mut r = ranges.lock();
    let Some((key, end, checked)) = r.get_mut(watch_id) else { return msg };
    if *checked == rev {
        return msg;
    }
    if server.check_watch(creds, key, end).is_ok() {
        *checked = rev;
        return msg;
    }
    let watch_id = *watch_id;
    r.remove(&watch_id);
    hub.cancel(stream, watch_id);
    WatchMsg::Response(WatchResponse {
        header: Some(server.header(0)),
        watch_id,
        canceled: true,
        cancel_reason: PERMISSION_DENIED.into(),
        ..Default::default()
    })
}

/// One client request on the stream. Err: the stream is gone.
async fn handle(
    server: &EtcdServer,
    hub: &WatchHub,
    stream: StreamId,
    tx: &mpsc::Sender<WatchMsg>,
    req: WatchRequest,
    creds: &crate::etcdserver::kv::Credentials,
    ranges: &Ranges,
) -> Result<(), ()> {
    match req.request_union {
        Some(RequestUnion::CreateRequest(c)) if server.check_watch(creds, &c.key, &c.range_end).is_err() => {
            let refused = WatchResponse {
                header: Some(server.header(0)),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: PERMISSION_DENIED.into(),
                ..Default::default()
            };
            tx.send(WatchMsg::Response(refused)).await.map_err(|_| ())?;
        }
        Some(RequestUnion::CreateRequest(c)) => {
            let range = (c.key.clone(), c.range_end.clone(), server.auth_revision());
            let spec = WatchSpec {
                no_put: c.filters.contains(&(FilterType::Noput as i32)),
                no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                key: c.key,
                range_end: c.range_end,
                start_revision: c.start_revision,
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
            };
            match hub.watch(stream, c.watch_id, spec) {
                Ok((id, rev)) => {
                    let created = WatchResponse {
                        header: Some(server.header(rev)),
                        watch_id: id,
                        created: true,
                        ..Default::default()
                    };
                    ranges.lock().insert(id, range);
                    // "created" goes out before any event of the watcher.
                    tx.send(WatchMsg::Response(created)).await.map_err(|_| ())?;
                    hub.activate(stream, id);
                }
                Err(e) => {
                    let refused = WatchResponse {
                        header: Some(server.header(0)),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: e.to_string(),
                        ..Default::default()
                    };
                    tx.send(WatchMsg::Response(refused)).await.map_err(|_| ())?;
                }
            }
        }
        Some(RequestUnion::CancelRequest(c)) if hub.cancel(stream, c.watch_id) => {
            ranges.lock().remove(&c.watch_id);
            let canceled = WatchResponse {
                header: Some(server.header(0)),
                watch_id: c.watch_id,
                canceled: true,
                ..Default::default()
            };
            tx.send(WatchMsg::Response(canceled)).await.map_err(|_| ())?;
        }
        Some(RequestUnion::CancelRequest(_)) => {}
        Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream),
        None => {}
    }
    Ok(())
}

/// The responses for one hub message.
fn responses(server: &EtcdServer, msg: WatchMsg) -> Vec<WatchResponse> {
    match msg {
        WatchMsg::Response(r) => vec![r],
        WatchMsg::Progress { watch_id, revision } => {
            vec![WatchResponse { header: Some(server.header(revision)), watch_id, ..Default::default() }]
        }
        WatchMsg::Compacted { watch_id, compact_revision } => vec![WatchResponse {
            header: Some(server.header(0)),
            watch_id,
            canceled: true,
            compact_revision,
            ..Default::default()
        }],
        WatchMsg::Events { watch_id, revision, mut events, prev_kv, fragment } => {
            if prev_kv {
                for e in &mut events {
                    e.prev_kv = previous(server, e);
                }
            }
            let resp = WatchResponse { header: Some(server.header(revision)), watch_id, events, ..Default::default() };
            // etcd's limit for a watch response: the request limit plus gRPC's overhead.
            let limit = server.cfg.max_request_bytes + super::GRPC_OVERHEAD_BYTES;
            if fragment { fragments(resp, limit) } else { vec![resp] }
        }
    }
}

/// The value a key had before the event, unless the event created it (or
/// the old value was compacted away).
fn previous(server: &EtcdServer, e: &Event) -> Option<kvd_api::mvccpb::KeyValue> {
    let kv = e.kv.as_ref()?;
    if e.r#type == EventType::Put as i32 && kv.version == 1 {
        return None;
    }
    let opts = RangeOptions { rev: kv.mod_revision - 1, ..Default::default() };
    server.store().range(&kv.key, RangeEnd::Single, opts).ok()?.kvs.into_iter().next()
}

/// Splits a response larger than `limit` into fragments of at least one
/// event each, all but the last marked `fragment`, as etcd's sendFragments.
fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < limit || resp.events.len() < 2 {
        return vec![resp];
    }
    let base = WatchResponse { events: Vec::new(), fragment: true, ..resp.clone() };
    let overhead = base.encoded_len();
    let mut out = Vec::new();
    let mut cur = base.clone();
    let mut size = overhead;
    for e in resp.events {
        let n = e.encoded_len() + 4;
        if !cur.events.is_empty() && size + n >= limit {
            out.push(std::mem::replace(&mut cur, base.clone()));
            size = overhead;
        }
        size += n;
        cur.events.push(e);
    }
    cur.fragment = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvd_api::mvccpb::KeyValue;

    fn ev(i: usize, size: usize) -> Event {
        Event {
            kv: Some(KeyValue { key: format!("k{i}").into_bytes(), value: vec![b'x'; size], ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn large_responses_split_into_ordered_fragments() {
        let events: Vec<Event> = (0..10).map(|i| ev(i, 100)).collect();
        let resp = WatchResponse { watch_id: 3, events: events.clone(), ..Default::default() };
        let parts = fragments(resp.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment && p.watch_id == 3));
        assert!(!parts.last().unwrap().fragment);
        let joined: Vec<Event> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(joined, events);
        assert!(parts.iter().all(|p| p.events.len() == 1 || p.encoded_len() < 350));
        // Small responses and single events are sent whole.
        assert_eq!(fragments(resp.clone(), 1 << 20).len(), 1);
        let one = WatchResponse { events: vec![ev(0, 1000)], ..Default::default() };
        assert_eq!(fragments(one, 10).len(), 1);
    }
}
