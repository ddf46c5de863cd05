//! Which HTTP version a new connection speaks, from its first bytes: an
//! HTTP/2 client (every gRPC client, with or without TLS) opens with the
//! connection preface; anything else is served as HTTP/1. The bytes read to
//! decide are handed back to the protocol by [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// RFC 9113 §3.4.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes either are the HTTP/2 preface or cannot be:
/// (is HTTP/2, the bytes read). A connection closed before it said anything
/// is reported as HTTP/1 with what it sent, which then fails there.
pub async fn sniff<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<(bool, Bytes)> {
    let mut buf = Vec::with_capacity(PREFACE.len());
    while buf.len() < PREFACE.len() {
        let mut chunk = [0u8; PREFACE.len()];
        let n = io.read(&mut chunk[..PREFACE.len() - buf.len()]).await?;
        if n == 0 {
            return Ok((false, buf.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&buf) {
            return Ok((false, buf.into()));
        }
    }
    Ok((true, buf.into()))
}

/// An IO that reads `prefix` before the rest of `inner`.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives its input one byte per read: the preface may arrive in pieces.
    struct Trickle(Bytes);

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.0.has_remaining() {
                buf.put_slice(&self.0[..1]);
                self.0.advance(1);
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn sniffed(input: &[u8]) -> (bool, Vec<u8>) {
        let mut io = Trickle(Bytes::copy_from_slice(input));
        let (h2, read) = sniff(&mut io).await.unwrap();
        let mut all = Vec::new();
        Rewind::new(read, io).read_to_end(&mut all).await.unwrap();
        (h2, all)
    }

    #[tokio::test]
    async fn the_preface_means_http2_and_every_byte_is_read_back() {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0rest");
        assert_eq!(sniffed(&input).await, (true, input.clone()));
    }

    #[tokio::test]
    async fn anything_else_is_http1_and_loses_nothing() {
        for input in [&b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"PRI * HTTP/1.1\r\n", b"P", b""] {
            assert_eq!(sniffed(input).await, (false, input.to_vec()), "{:?}", String::from_utf8_lossy(input));
        }
    }
}
