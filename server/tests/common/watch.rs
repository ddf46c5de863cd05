//! A watch stream client for tests: creates watchers, collects responses.

use std::time::Duration;

use kvd_api::etcdserverpb::watch_client::WatchClient;
use kvd_api::etcdserverpb::watch_request::RequestUnion;
use kvd_api::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

type Call = tokio::task::JoinHandle<Result<tonic::Response<tonic::Streaming<WatchResponse>>, tonic::Status>>;

pub struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    /// The call in flight: Go's gRPC server sends the response headers only
    /// with the first response, so the call cannot be awaited before a request is sent.
    call: Option<Call>,
    rx: Option<tonic::Streaming<WatchResponse>>,
    /// Responses read while waiting for something else.
    backlog: std::collections::VecDeque<WatchResponse>,
}

impl WatchStream {
    pub async fn open(endpoint: &str) -> WatchStream {
        let ch = Channel::from_shared(endpoint.to_string()).unwrap().connect().await.unwrap();
        Self::open_on(ch).await
    }

    pub async fn open_on(ch: Channel) -> WatchStream {
        Self::open_as(ch, None).await
    }

    /// A stream carrying an auth token.
    pub async fn open_with_token(endpoint: &str, token: &str) -> WatchStream {
        let ch = Channel::from_shared(endpoint.to_string()).unwrap().connect().await.unwrap();
        Self::open_as(ch, Some(token.to_string())).await
    }

    async fn open_as(ch: Channel, token: Option<String>) -> WatchStream {
        let (tx, rx) = mpsc::channel(64);
        let mut out = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = token {
            out.metadata_mut().insert("token", t.parse().unwrap());
        }
        let call =
            tokio::spawn(async move { WatchClient::new(ch).max_decoding_message_size(usize::MAX).watch(out).await });
        WatchStream { tx, call: Some(call), rx: None, backlog: Default::default() }
    }

    async fn rx(&mut self) -> &mut tonic::Streaming<WatchResponse> {
        if let Some(call) = self.call.take() {
            self.rx = Some(call.await.unwrap().expect("watch call failed").into_inner());
        }
        self.rx.as_mut().unwrap()
    }

    pub async fn send(&self, r: RequestUnion) {
        self.tx.send(WatchRequest { request_union: Some(r) }).await.unwrap();
    }

    /// Creates a watcher and returns the "created" response.
    pub async fn create(&mut self, c: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(c)).await;
        loop {
            let r = self.rx().await.message().await.unwrap().expect("stream ended before the created response");
            if r.created {
                return r;
            }
            self.backlog.push_back(r);
        }
    }

    pub async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })).await;
    }

    pub async fn progress(&self) {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
    }

    /// The next response, or None if none arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<WatchResponse> {
        if let Some(r) = self.backlog.pop_front() {
            return Some(r);
        }
        let rx = match tokio::time::timeout(within, self.rx()).await {
            Ok(rx) => rx,
            Err(_) => return None,
        };
        match tokio::time::timeout(within, rx.message()).await {
            Ok(Ok(r)) => r,
            Ok(Err(s)) => panic!("watch stream failed: {s:?}"),
            Err(_) => None,
        }
    }

    /// Every response until none arrives for `idle`.
    pub async fn drain(&mut self, idle: Duration) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        while let Some(r) = self.next(idle).await {
            out.push(r);
        }
        out
    }
}
