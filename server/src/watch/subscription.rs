//! A watcher for the server's own use (Lock, Election): one hub stream with
//! one watcher, closed when the subscription is dropped.

use std::sync::Arc;

use kvd_api::mvccpb::Event;
use tokio::sync::mpsc;

use super::{StreamId, WatchHub, WatchMsg, WatchSpec};

pub struct Subscription {
    hub: Arc<WatchHub>,
    stream: StreamId,
    rx: mpsc::Receiver<WatchMsg>,
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Delivery {
    Events(Vec<Event>),
    /// The start revision was compacted (the subscription is over).
    Compacted(i64),
}

impl WatchHub {
    /// Watches `spec` until the returned subscription is dropped.
    pub fn subscribe(self: &Arc<Self>, spec: WatchSpec) -> Subscription {
        let (tx, rx) = mpsc::channel(64);
        let stream = self.open_stream(tx);
        if let Ok((id, _)) = self.watch(stream, 0, spec) {
            self.activate(stream, id);
        }
        Subscription { hub: self.clone(), stream, rx }
    }
}

impl Subscription {
    /// The next delivery; None once the hub is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.rx.recv().await? {
                WatchMsg::Events { events, .. } => return Some(Delivery::Events(events)),
                WatchMsg::Compacted { compact_revision, .. } => return Some(Delivery::Compacted(compact_revision)),
                WatchMsg::Progress { .. } | WatchMsg::Response(_) => {}
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.close_stream(self.stream);
    }
}
