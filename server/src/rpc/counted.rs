//! A body that adds the size of every data frame to a counter (etcd's
//! `etcd_network_client_grpc_{received,sent}_bytes_total`).

use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;

pub struct Counted<B> {
    inner: B,
    counter: &'static Counter,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: &'static Counter) -> Self {
        Counted { inner, counter }
    }
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `body`, counted, as an axum body.
pub fn counted<B>(body: B, counter: &'static Counter) -> axum::body::Body
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    axum::body::Body::new(Counted::new(body, counter))
}
