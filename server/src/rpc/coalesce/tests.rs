//! The flush yields once, then everything buffered leaves in one write.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};

use super::*;
use futures::task::noop_waker_ref;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records every write it is given; `room` bytes accepted per call at most.
#[derive(Clone, Default)]
struct Recorder {
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
    room: Option<usize>,
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let n = self.room.map_or(data.len(), |r| r.min(data.len()));
        self.writes.lock().unwrap().push(data[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn writes_around_a_yielded_flush_leave_together() {
    let rec = Recorder::default();
    let mut io = Coalesced::new(rec.clone());
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut io = Pin::new(&mut io);
    assert!(matches!(io.as_mut().poll_write(&mut cx, b"first "), Poll::Ready(Ok(6))));
    assert!(io.as_mut().poll_flush(&mut cx).is_pending(), "the first flush yields");
    assert!(rec.writes.lock().unwrap().is_empty());
    assert!(matches!(io.as_mut().poll_write(&mut cx, b"second"), Poll::Ready(Ok(6))));
    assert!(matches!(io.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!(*rec.writes.lock().unwrap(), vec![b"first second".to_vec()]);
    // Nothing buffered: a flush does not yield.
    assert!(matches!(io.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
}

#[test]
fn partial_socket_writes_continue_where_they_stopped() {
    let rec = Recorder { room: Some(4), ..Default::default() };
    let mut io = Coalesced::new(rec.clone());
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut io = Pin::new(&mut io);
    let _ = io.as_mut().poll_write(&mut cx, b"0123456789");
    assert!(io.as_mut().poll_flush(&mut cx).is_pending());
    assert!(matches!(io.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!(rec.writes.lock().unwrap().concat(), b"0123456789".to_vec());
}

#[tokio::test]
async fn a_real_stream_round_trips_and_pushes_back() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let mut a = Coalesced::new(a);
    // More than the high water mark and the pipe: the writer must wait for
    // the reader instead of buffering without bound.
    let data: Vec<u8> = (0..(HIGH_WATER * 3)).map(|i| (i % 251) as u8).collect();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(10_000) {
            a.write_all(chunk).await.unwrap();
            assert!(a.buf.len() - a.pos <= HIGH_WATER + 10_000, "buffer grew to {}", a.buf.len());
        }
        a.flush().await.unwrap();
        a
    });
    let mut got = vec![0u8; expect.len()];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(got, expect);
    let mut a = writer.await.unwrap();
    a.write_all(b"bye").await.unwrap();
    poll_fn(|cx| Pin::new(&mut a).poll_shutdown(cx)).await.unwrap();
    let mut tail = Vec::new();
    b.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, b"bye");
}
