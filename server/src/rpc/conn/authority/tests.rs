//! The mend over in-memory connections: frames a client would send, encoded
//! with HPACK's dynamic table as Go's clients do, read back through
//! [`Mend`] and decoded as h2 would.

use bytes::Bytes;
use loona_hpack::{Decoder, Encoder};
use tokio::io::AsyncReadExt;

use super::*;

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;

/// A header list, as HPACK decodes it.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn request(authority: &str, path: &str) -> Fields {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.26.0"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

fn encode(enc: &mut Encoder<'_>, fields: &Fields) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// A client's connection past its preface: SETTINGS, then `n` unary calls
/// on streams 1, 3, … (HEADERS, DATA with END_STREAM), all encoded with
/// one dynamic table.
fn client(authority: &str, n: u32) -> (Vec<u8>, Vec<Fields>) {
    let mut enc = Encoder::new();
    let mut bytes = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
    let mut sent = Vec::new();
    for i in 0..n {
        let fields = request(authority, &format!("/etcdserverpb.KV/Put{i}"));
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &encode(&mut enc, &fields)));
        bytes.extend(frame(DATA, END_STREAM, 2 * i + 1, b"\0\0\0\0\x02hi"));
        sent.push(fields);
    }
    (bytes, sent)
}

/// Gives its input `step` bytes per read.
struct Trickle(Bytes, usize);

impl AsyncRead for Trickle {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.1.min(self.0.len()).min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0.advance(n);
        Poll::Ready(Ok(()))
    }
}

async fn through(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    Mend::new(Trickle(Bytes::copy_from_slice(input), step)).read_to_end(&mut out).await?;
    Ok(out)
}

/// What h2 reads from `bytes`: each frame's (kind, flags, stream), and
/// the header blocks decoded with one table.
fn read_as_h2(mut bytes: &[u8]) -> (Vec<(u8, u8, u32)>, Vec<Fields>) {
    let (mut frames, mut blocks, mut block) = (Vec::new(), Vec::new(), Vec::new());
    let mut dec = Decoder::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        assert!(len <= MAX_FRAME as usize, "a frame larger than h2 takes");
        let (kind, flags) = (bytes[3], bytes[4]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let payload = &bytes[FRAME_HEADER..FRAME_HEADER + len];
        if kind == HEADERS || kind == CONTINUATION {
            block.extend_from_slice(fragment(payload, if kind == HEADERS { flags } else { 0 }).unwrap());
            if flags & END_HEADERS != 0 {
                blocks.push(dec.decode(&block).unwrap());
                block.clear();
            }
        }
        frames.push((kind, flags, stream));
        bytes = &bytes[FRAME_HEADER + len..];
    }
    (frames, blocks)
}

fn with_authority(fields: &Fields, authority: Option<&str>) -> Fields {
    let mut f: Vec<_> = fields.iter().filter(|(n, _)| n != b":authority").cloned().collect();
    if let Some(a) = authority {
        let at = fields.iter().position(|(n, _)| n == b":authority").unwrap();
        f.insert(at, (b":authority".to_vec(), a.as_bytes().to_vec()));
    }
    f
}

#[tokio::test]
async fn a_valid_authority_goes_through_byte_for_byte() {
    for authority in ["127.0.0.1:2379", "localhost", "etcd-0.etcd.svc:2379", "[::1]:2379"] {
        let (input, _) = client(authority, 3);
        for step in [1, 7, 1 << 20] {
            assert_eq!(through(&input, step).await.unwrap(), input, "{authority} read {step} bytes at a time");
        }
    }
}

#[tokio::test]
async fn a_scheme_is_taken_off_every_request_of_the_connection() {
    for (sent, expected) in [
        ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
        ("https://etcd.example:2379/", Some("etcd.example:2379")),
        ("unix:///var/run/etcd.sock", None),
        ("#initially=[https://example.com:2379]", None),
        ("", None),
    ] {
        let (input, requests) = client(sent, 4);
        for step in [1, 5, 1 << 20] {
            let out = through(&input, step).await.unwrap();
            let (frames, blocks) = read_as_h2(&out);
            let want: Vec<_> = requests.iter().map(|r| with_authority(r, expected)).collect();
            assert_eq!(blocks, want, "{sent:?} read {step} bytes at a time");
            // Every frame is there, in order, with its flags.
            let (sent_frames, _) = read_as_h2(&input);
            assert_eq!(frames, sent_frames, "{sent:?}");
        }
    }
}

#[tokio::test]
async fn padding_priority_and_continuations_are_read() {
    let mut enc = Encoder::new();
    let mut input = Vec::new();
    let mut want = Vec::new();
    for stream in [1u32, 3] {
        let fields = request("http://10.0.0.1:2379", "/etcdserverpb.Watch/Watch");
        let block = encode(&mut enc, &fields);
        // HEADERS padded (3 bytes) with a priority, then the rest in
        // CONTINUATIONs of 10 bytes.
        let (head, tail) = block.split_at(10);
        let mut payload = vec![3];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, stream, &payload));
        let chunks: Vec<_> = tail.chunks(10).collect();
        for (i, c) in chunks.iter().enumerate() {
            input.extend(frame(CONTINUATION, if i + 1 == chunks.len() { END_HEADERS } else { 0 }, stream, c));
        }
        want.push(with_authority(&fields, Some("10.0.0.1:2379")));
    }
    let out = through(&input, 3).await.unwrap();
    let (frames, blocks) = read_as_h2(&out);
    assert_eq!(blocks, want);
    // One HEADERS per request, END_STREAM kept, no padding or priority.
    assert_eq!(frames, vec![(HEADERS, END_STREAM | END_HEADERS, 1), (HEADERS, END_STREAM | END_HEADERS, 3)]);
}

/// A block of `n` one-byte references to the client's table entry 62 (the
/// newest field it indexed).
fn references(n: usize) -> Vec<u8> {
    vec![0x80 | 62; n]
}

#[tokio::test]
async fn a_block_that_decodes_to_more_than_the_header_list_size_ends_a_mended_connection() {
    // The first request indexes a 4,000-byte field; the second refers to it
    // 16,000 times: 64 MB decoded, from 16 KB.
    let mut enc = Encoder::new();
    let mut fields = request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range");
    fields.push((b"x-big".to_vec(), vec![b'a'; 4000]));
    let mut input = frame(HEADERS, END_HEADERS | END_STREAM, 1, &encode(&mut enc, &fields));
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &references(16_000)));
    let e = through(&input, 1 << 20).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("header list size"), "{e}");

    // The same from a connection that needs no mending goes to h2 as it is,
    // which refuses it by its own limits.
    let mut enc = Encoder::new();
    let mut fields = request("127.0.0.1:2379", "/etcdserverpb.KV/Range");
    fields.push((b"x-big".to_vec(), vec![b'a'; 4000]));
    let mut input = frame(HEADERS, END_HEADERS | END_STREAM, 1, &encode(&mut enc, &fields));
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &references(16_000)));
    assert_eq!(through(&input, 1 << 20).await.unwrap(), input);
}

#[tokio::test]
async fn frames_out_of_place_end_a_mended_connection_and_pass_on_one_being_watched() {
    let mut enc = Encoder::new();
    let first = encode(&mut enc, &request("http://127.0.0.1:2379", "/a"));
    let second = encode(&mut enc, &request("http://127.0.0.1:2379", "/b"));
    let cases: [(&str, Vec<u8>); 3] = [
        ("a CONTINUATION of another stream", {
            let mut f = frame(HEADERS, 0, 3, &second[..4]);
            f.extend(frame(CONTINUATION, END_HEADERS, 5, &second[4..]));
            f
        }),
        ("a DATA frame inside a header block", {
            let mut f = frame(HEADERS, 0, 3, &second[..4]);
            f.extend(frame(DATA, 0, 3, b"x"));
            f
        }),
        ("a header frame larger than the frame size", frame(HEADERS, END_HEADERS, 3, &vec![0; MAX_FRAME as usize + 1])),
    ];
    for (what, bad) in cases {
        let mut input = frame(HEADERS, END_HEADERS, 1, &first);
        input.extend(&bad);
        let e = through(&input, 1 << 20).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}");
        // As the first block of a connection: passed on untouched.
        assert_eq!(through(&bad, 1 << 20).await.unwrap(), bad, "{what}");
    }
    // Endless CONTINUATIONs: refused at four times the header list size.
    let mut input = frame(HEADERS, END_HEADERS, 1, &first);
    input.extend(frame(HEADERS, 0, 3, &second[..4]));
    for _ in 0..=MAX_BLOCK / MAX_FRAME as usize {
        input.extend(frame(CONTINUATION, 0, 3, &vec![0x80 | 2; MAX_FRAME as usize]));
    }
    let e = through(&input, 1 << 20).await.unwrap_err();
    assert!(e.to_string().contains("four times"), "{e}");
}

#[tokio::test]
async fn a_connection_cut_short_hands_what_it_sent_to_h2() {
    let (input, _) = client("http://127.0.0.1:2379", 2);
    let (first, _) = client("http://127.0.0.1:2379", 1);
    // The second request's HEADERS frame, cut after 5 bytes of its header.
    let cut = &input[..first.len() + 5];
    let out = through(cut, 1 << 20).await.unwrap();
    let mended_first = through(&first, 1 << 20).await.unwrap();
    assert_eq!(&out[..mended_first.len()], &mended_first[..]);
    assert_eq!(&out[mended_first.len()..], &cut[first.len()..]);
}

#[test]
fn mend_keeps_valid_authorities_and_strips_schemes_and_paths() {
    assert_eq!(mend(b"127.0.0.1:2379"), None);
    assert_eq!(mend(b"http://127.0.0.1:2379"), Some(Some(b"127.0.0.1:2379".to_vec())));
    assert_eq!(mend(b"https://[::1]:2379/x?y#z"), Some(Some(b"[::1]:2379".to_vec())));
    assert_eq!(mend(b"#initially=[https://a:1]"), Some(None));
    assert_eq!(mend(b"http://"), Some(None));
}
