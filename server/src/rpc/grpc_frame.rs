//! gRPC's length-prefixed message framing: a compressed flag (one byte), the
//! message's length (4 bytes, big-endian), then the message. Shared by the
//! JSON gateway, which speaks gRPC to the client port, and `kvctl bench`.

use bytes::{BufMut, BytesMut};

/// Bytes before each message.
pub const HEADER_LEN: usize = 5;

/// Appends `m` as one uncompressed frame.
pub fn put(out: &mut BytesMut, m: &impl prost::Message) {
    let len = m.encoded_len();
    out.reserve(HEADER_LEN + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    m.encode_raw(out);
}

/// The header at the front of `buf`: (compressed, message length), or None
/// while fewer than [`HEADER_LEN`] bytes are there.
pub fn header(buf: &[u8]) -> Option<(bool, usize)> {
    let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    Some((h[0] != 0, u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvd_api::etcdserverpb::PutRequest;
    use prost::Message;

    #[test]
    fn a_frame_reads_back_as_its_header_and_message() {
        let m = PutRequest { key: b"k".to_vec(), value: vec![7; 300], ..Default::default() };
        let mut out = BytesMut::new();
        put(&mut out, &m);
        assert_eq!(header(&out), Some((false, m.encoded_len())));
        assert_eq!(out.len(), HEADER_LEN + m.encoded_len());
        assert_eq!(PutRequest::decode(&out[HEADER_LEN..]).unwrap(), m);
        assert_eq!(header(&out[..4]), None, "a partial header is not read");
        out[0] = 1;
        assert_eq!(header(&out).map(|h| h.0), Some(true));
    }
}
