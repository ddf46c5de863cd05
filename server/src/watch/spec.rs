//! What a watcher asks for, what a stream receives, and how creating a
//! watcher can fail.

use kvd_api::etcdserverpb::WatchResponse;
use kvd_api::mvccpb::Event;
use kvd_api::mvccpb::event::EventType;

/// Messages on the channel of one watch stream.
#[derive(Debug)]
pub enum WatchMsg {
    /// Events of one watcher, in revision order, up to `revision`.
    Events { watch_id: i64, revision: i64, events: Vec<Event>, prev_kv: bool, fragment: bool },
    /// The watcher's next revision was compacted away; it is gone.
    Compacted { watch_id: i64, compact_revision: i64 },
    /// Every event up to `revision` was delivered (`watch_id` -1: the whole stream).
    Progress { watch_id: i64, revision: i64 },
    /// A response the stream itself produced (created, canceled).
    Response(WatchResponse),
}

/// What a client asked to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// Empty: `key` only; `\0`: every key from `key`; else `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// 0 = from the next revision.
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

impl WatchSpec {
    pub(super) fn matches(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        let k = kv.key.as_slice();
        let in_range = match self.range_end.as_slice() {
            [] => k == self.key.as_slice(),
            [0] => k >= self.key.as_slice(),
            end => k >= self.key.as_slice() && k < end,
        };
        in_range
            && !(self.no_put && e.r#type == EventType::Put as i32)
            && !(self.no_delete && e.r#type == EventType::Delete as i32)
    }

    pub(super) fn is_single_key(&self) -> bool {
        self.range_end.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("mvcc: watch stream closed")]
    StreamClosed,
}
