//! Mends a request's `:authority` that HTTP/2 forbids but grpc-go servers
//! (etcd) take as it is. etcd 3.4's clientv3 (Debian's etcdctl) sends the
//! endpoint as given, `http://host:port`; clientv3 3.5.0 sends
//! `#initially=[…]`. The h2 crate refuses such a request (RST_STREAM
//! PROTOCOL_ERROR), so etcdctl 3.4 with `--endpoints http://…` could not
//! talk to kvd.
//!
//! [`Mend`] sits under h2 and reads the client's frames. The first header
//! block is decoded (HPACK, `loona_hpack`): if its `:authority` is valid, or
//! absent, every byte from then on goes to h2 untouched and unread, so a
//! well-behaved client costs one decode per connection. Otherwise every
//! header block of the connection is decoded with the client's table and
//! encoded again for h2 (which then never sees the client's table), with
//! the authority mended: `scheme://host:port/…` becomes `host:port`, and one
//! that is still invalid is dropped (kvd never reads it).
//!
//! The limits are h2's, as `super::h2` sets them: a header frame larger than
//! the frame size, a block of more than four times the header list size, or
//! a block that decodes to more than the header list size ends a mended
//! connection (h2 would refuse the same input); on a connection still being
//! watched, such input is passed to h2 as it is, which then refuses it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::uri::Authority;
use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2::{MAX_FRAME, MAX_HEADER_LIST};

const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The dynamic table the client's encoder may use: HTTP/2's default
/// SETTINGS_HEADER_TABLE_SIZE, which kvd's h2 server does not change.
const CLIENT_TABLE: usize = 4096;
/// Most bytes of one encoded header block held while its frames arrive.
const MAX_BLOCK: usize = 4 * MAX_HEADER_LIST as usize;
/// Bytes read from the connection at once while its frames are read.
const READ: usize = 16 << 10;

/// An IO whose reads are the client's frames with their `:authority`
/// mended (the module's doc); writes go through as they are.
pub struct Mend<T> {
    io: T,
    /// None once the connection needs no mending.
    frames: Option<Box<Frames>>,
    input: BytesMut,
    output: BytesMut,
    eof: bool,
}

impl<T> Mend<T> {
    /// `io` past the connection preface.
    pub fn new(io: T) -> Self {
        Mend { io, frames: Some(Box::new(Frames::new())), input: BytesMut::new(), output: BytesMut::new(), eof: false }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Mend<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            let Some(frames) = this.frames.as_mut() else {
                if this.output.capacity() > 0 {
                    // Done with the buffers: from here on reads are the IO's.
                    (this.input, this.output) = (BytesMut::new(), BytesMut::new());
                }
                return Pin::new(&mut this.io).poll_read(cx, buf);
            };
            frames.advance(&mut this.input, &mut this.output)?;
            if frames.mode == Mode::Pass || this.eof {
                // What is left (at the end, a frame cut short) goes to h2
                // as it is.
                this.frames = None;
                this.output.unsplit(this.input.split());
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if !this.output.is_empty() {
                continue;
            }
            this.input.reserve(READ);
            let mut chunk = ReadBuf::uninit(this.input.spare_capacity_mut());
            match Pin::new(&mut this.io).poll_read(cx, &mut chunk) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = chunk.filled().len();
                    // SAFETY: poll_read initialized the first `n` bytes of
                    // the spare capacity (ReadBuf::filled).
                    unsafe { this.input.set_len(this.input.len() + n) };
                    this.eof = n == 0;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Mend<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The first header block is yet to come.
    Watch,
    /// Every header block is decoded and encoded again.
    Rewrite,
    /// The connection needs nothing: everything goes to h2 as it is.
    Pass,
}

/// The client's frames, read without IO: [`Frames::advance`] moves what
/// it has read from `input` to `output`.
struct Frames {
    mode: Mode,
    /// With the client's dynamic table.
    decoder: Decoder<'static>,
    /// For h2, with no dynamic table: each field is sent in full, so h2's
    /// table never matters.
    encoder: Encoder<'static>,
    /// Bytes of the current frame's payload still to pass on as they are.
    passing: usize,
    block: Option<Block>,
}

/// A header block whose frames are still arriving.
struct Block {
    stream: u32,
    end_stream: bool,
    fragments: BytesMut,
    /// The frames as they came, to pass on unchanged when the block needs
    /// nothing (watching only).
    frames: BytesMut,
}

/// A connection that could only be mended by breaking the protocol further.
fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 header block with a mended :authority: {what}"))
}

impl Frames {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(CLIENT_TABLE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(0);
        Frames { mode: Mode::Watch, decoder, encoder, passing: 0, block: None }
    }

    /// Moves every whole frame (and the payload of others, as it comes) from
    /// `input` to `output`, mending header blocks as the mode says.
    fn advance(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> io::Result<()> {
        while self.mode != Mode::Pass {
            if self.passing > 0 {
                let n = self.passing.min(input.len());
                if n == 0 {
                    return Ok(());
                }
                output.extend_from_slice(&input.split_to(n));
                self.passing -= n;
                continue;
            }
            if input.len() < FRAME_HEADER {
                return Ok(());
            }
            let len = (usize::from(input[0]) << 16) | (usize::from(input[1]) << 8) | usize::from(input[2]);
            let (kind, flags) = (input[3], input[4]);
            let stream = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
            if self.block.is_none() && kind != HEADERS && kind != CONTINUATION {
                output.extend_from_slice(&input.split_to(FRAME_HEADER));
                self.passing = len;
                continue;
            }
            let expected = match &self.block {
                None => kind == HEADERS,
                Some(b) => kind == CONTINUATION && b.stream == stream,
            };
            if !expected || len > MAX_FRAME as usize {
                return self.give_up(output, "a frame out of place, or larger than the frame size");
            }
            if input.len() < FRAME_HEADER + len {
                return Ok(());
            }
            let frame = input.split_to(FRAME_HEADER + len);
            let fragment =
                if kind == HEADERS { fragment(&frame[FRAME_HEADER..], flags) } else { Some(&frame[FRAME_HEADER..]) };
            let Some(fragment) = fragment else {
                output.extend_from_slice(&frame);
                return self.give_up(output, "padding longer than its frame");
            };
            let watching = self.mode == Mode::Watch;
            let block = self.block.get_or_insert_with(|| Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                fragments: BytesMut::new(),
                frames: BytesMut::new(),
            });
            block.fragments.extend_from_slice(fragment);
            if watching {
                block.frames.extend_from_slice(&frame);
            }
            if block.fragments.len() > MAX_BLOCK {
                return self.give_up(output, "a header block larger than four times the header list size");
            }
            if flags & END_HEADERS != 0 {
                let block = self.block.take().expect("a block is gathered");
                self.finish(block, output)?;
            }
        }
        Ok(())
    }

    /// Input that h2 refuses anyway: while watching, it goes to h2 as it is
    /// (with the block gathered so far); on a mended connection it ends the
    /// connection, since h2 could not make sense of it.
    fn give_up(&mut self, output: &mut BytesMut, what: &str) -> io::Result<()> {
        if self.mode == Mode::Rewrite {
            return Err(refused(what));
        }
        if let Some(b) = self.block.take() {
            // Nothing went to `output` since the block began.
            output.unsplit(b.frames);
        }
        self.mode = Mode::Pass;
        Ok(())
    }

    /// A whole header block: passed on as it came while it needs nothing,
    /// else decoded, mended, and encoded for h2.
    fn finish(&mut self, block: Block, output: &mut BytesMut) -> io::Result<()> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut size, mut over) = (0, false);
        let decoded = self.decoder.decode_with_cb(&block.fragments, |name, value| {
            // RFC 9113 §6.5.2's size of a field; nothing is kept past the limit.
            size += name.len() + value.len() + 32;
            over |= size > MAX_HEADER_LIST as usize;
            if !over {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        let authority = fields.iter().position(|(n, _)| n == b":authority");
        let mended = authority.and_then(|i| mend(&fields[i].1));
        if self.mode == Mode::Watch {
            if decoded.is_err() || over || mended.is_none() {
                output.unsplit(block.frames);
                self.mode = Mode::Pass;
                return Ok(());
            }
            tracing::debug!(
                authority = %String::from_utf8_lossy(&fields[authority.expect("mended")].1),
                "mending the :authority of this connection's requests"
            );
            self.mode = Mode::Rewrite;
        }
        decoded.map_err(|e| refused(&format!("HPACK: {e:?}")))?;
        if over {
            return Err(refused("larger than the header list size"));
        }
        match (authority, mended) {
            (Some(i), Some(Some(value))) => fields[i].1 = value,
            (Some(i), Some(None)) => drop(fields.remove(i)),
            _ => {}
        }
        let mut encoded = Vec::new();
        self.encoder
            .encode_into(fields.iter().map(|(n, v)| (&n[..], &v[..])), &mut encoded)
            .expect("encoding into a Vec does not fail");
        // HEADERS, then CONTINUATION frames, each no larger than h2 takes.
        let (mut rest, mut kind) = (&encoded[..], HEADERS);
        loop {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME as usize));
            let mut flags = if tail.is_empty() { END_HEADERS } else { 0 };
            if kind == HEADERS && block.end_stream {
                flags |= END_STREAM;
            }
            output.put_uint(chunk.len() as u64, 3);
            output.put_u8(kind);
            output.put_u8(flags);
            output.put_u32(block.stream);
            output.extend_from_slice(chunk);
            if tail.is_empty() {
                break;
            }
            (rest, kind) = (tail, CONTINUATION);
        }
        Ok(())
    }
}

/// The header block fragment of a HEADERS frame's payload: without its
/// padding and priority (None if the padding does not fit).
fn fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let (mut start, mut end) = (0, payload.len());
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

/// What a request's `:authority` should be: None while it is valid as it is,
/// else the `host:port` of `scheme://host:port/…`, or Some(None) (drop it)
/// when even that is not an authority.
fn mend(value: &[u8]) -> Option<Option<Vec<u8>>> {
    if Authority::try_from(value).is_ok() {
        return None;
    }
    let rest = value.windows(3).position(|w| w == b"://").map_or(value, |i| &value[i + 3..]);
    let end = rest.iter().position(|&c| matches!(c, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let host = &rest[..end];
    Some((!host.is_empty() && Authority::try_from(host).is_ok()).then(|| host.to_vec()))
}

#[cfg(test)]
mod tests;
