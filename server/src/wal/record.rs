//! WAL record framing: typed records, length-prefixed, CRC32-Castagnoli chained,
//! padded to 8 bytes.
//!
//! Frame layout (all integers little-endian, fixed width):
//!
//! | offset | size | field                                                   |
//! |--------|------|---------------------------------------------------------|
//! | 0      | 4    | `len`: length of `data` in bytes                        |
//! | 4      | 1    | `type`: [`RecordType`]                                  |
//! | 5      | 1    | `pad`: zero bytes after `data` (0..=7)                  |
//! | 6      | 2    | magic `0x4B56` ("KV"): a zeroed header is never valid   |
//! | 8      | 4    | `crc`: crc32c(previous crc, `type` ‖ `data`)            |
//! | 12     | len  | `data`                                                  |
//! | 12+len | pad  | zeros, so the next frame starts 8-byte aligned          |
//!
//! Frames start 8-byte aligned so that a frame header never straddles a sector
//! boundary and cannot be torn. A header of eight zero bytes marks the end of
//! the written part of a (preallocated, zero-filled) segment.

use bytes::{Buf, Bytes};

/// Size of the fixed frame header (length, type, pad, magic, crc).
pub const HEADER_LEN: usize = 12;
/// Magic in every frame header; a preallocated zero region never decodes as a frame.
pub const MAGIC: u16 = 0x4B56;
/// Largest `data` accepted by the decoder (a bound against garbage lengths).
pub const MAX_RECORD_DATA: usize = 512 << 20;

/// The kinds of record, as in etcd's WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// Member identity: node id and cluster id. First record of every segment.
    Metadata = 1,
    /// One raft log entry: index, then the encoded entry.
    Entry = 2,
    /// Raft hard state (the vote), opaque to the WAL.
    State = 3,
    /// The CRC of the previous segment's last record; first record of a segment.
    Crc = 4,
    /// A snapshot / purge marker: entries at or below its index are gone.
    Snapshot = 5,
    /// Entries with index >= `since` are discarded (raft log conflict).
    Truncate = 6,
    /// Highest committed log id, opaque to the WAL.
    Commit = 7,
}

impl RecordType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Metadata,
            2 => Self::Entry,
            3 => Self::State,
            4 => Self::Crc,
            5 => Self::Snapshot,
            6 => Self::Truncate,
            7 => Self::Commit,
            _ => return None,
        })
    }
}

/// Identity stored at the head of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub node_id: u64,
    pub cluster_id: u64,
}

/// A decoded WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Metadata(Metadata),
    Entry { index: u64, data: Bytes },
    State(Bytes),
    Crc(u32),
    Snapshot { index: u64, data: Bytes },
    Truncate { since: u64 },
    Commit(Bytes),
}

impl Record {
    fn record_type(&self) -> RecordType {
        match self {
            Record::Metadata(_) => RecordType::Metadata,
            Record::Entry { .. } => RecordType::Entry,
            Record::State(_) => RecordType::State,
            Record::Crc(_) => RecordType::Crc,
            Record::Snapshot { .. } => RecordType::Snapshot,
            Record::Truncate { .. } => RecordType::Truncate,
            Record::Commit(_) => RecordType::Commit,
        }
    }

    /// Appends the record's `data` field to `out`.
    fn encode_data(&self, out: &mut Vec<u8>) {
        match self {
            Record::Metadata(m) => {
                out.extend_from_slice(&m.node_id.to_le_bytes());
                out.extend_from_slice(&m.cluster_id.to_le_bytes());
            }
            Record::Entry { index, data } | Record::Snapshot { index, data } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(data);
            }
            Record::State(b) | Record::Commit(b) => out.extend_from_slice(b),
            Record::Crc(c) => out.extend_from_slice(&c.to_le_bytes()),
            Record::Truncate { since } => out.extend_from_slice(&since.to_le_bytes()),
        }
    }

    fn decode_data(ty: RecordType, data: &[u8]) -> Option<Record> {
        let mut b = data;
        let fixed_u64 = |b: &mut &[u8]| -> Option<u64> { (b.len() >= 8).then(|| b.get_u64_le()) };
        Some(match ty {
            RecordType::Metadata => {
                if b.len() != 16 {
                    return None;
                }
                Record::Metadata(Metadata { node_id: b.get_u64_le(), cluster_id: b.get_u64_le() })
            }
            RecordType::Entry => {
                let index = fixed_u64(&mut b)?;
                Record::Entry { index, data: Bytes::copy_from_slice(b) }
            }
            RecordType::Snapshot => {
                let index = fixed_u64(&mut b)?;
                Record::Snapshot { index, data: Bytes::copy_from_slice(b) }
            }
            RecordType::State => Record::State(Bytes::copy_from_slice(b)),
            RecordType::Commit => Record::Commit(Bytes::copy_from_slice(b)),
            RecordType::Crc => {
                if b.len() != 4 {
                    return None;
                }
                Record::Crc(b.get_u32_le())
            }
            RecordType::Truncate => {
                if b.len() != 8 {
                    return None;
                }
                Record::Truncate { since: b.get_u64_le() }
            }
        })
    }
}

/// Total frame size (header + data + padding) for `data_len` bytes of data.
pub fn frame_len(data_len: usize) -> usize {
    (HEADER_LEN + data_len).div_ceil(8) * 8
}

/// Encodes records into frames, carrying the CRC chain.
#[derive(Debug, Clone)]
pub struct Encoder {
    crc: u32,
}

impl Encoder {
    pub fn new(prev_crc: u32) -> Self {
        Self { crc: prev_crc }
    }

    /// The running CRC: the `crc` of the last encoded record.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Appends one frame for `rec` to `out`.
    pub fn encode(&mut self, rec: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        rec.encode_data(out);
        let data_len = out.len() - start - HEADER_LEN;
        let total = frame_len(data_len);
        let pad = total - HEADER_LEN - data_len;
        out.resize(start + total, 0);
        let ty = rec.record_type() as u8;
        let crc = crc32c::crc32c_append(self.crc, &[ty]);
        let crc = crc32c::crc32c_append(crc, &out[start + HEADER_LEN..start + HEADER_LEN + data_len]);
        self.crc = crc;
        let hdr = &mut out[start..start + HEADER_LEN];
        hdr[0..4].copy_from_slice(&(data_len as u32).to_le_bytes());
        hdr[4] = ty;
        hdr[5] = pad as u8;
        hdr[6..8].copy_from_slice(&MAGIC.to_le_bytes());
        hdr[8..12].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The frame runs past the end of the file.
    Truncated,
    /// The header has no magic, or an impossible length or padding.
    BadHeader,
    /// Unknown record type.
    BadType(u8),
    /// The CRC chain does not match. `torn` is set when a 512-byte sector inside
    /// the frame is all zeros: the signature of a write that did not finish.
    CrcMismatch { torn: bool },
    /// The CRC matched but the data is malformed for its type.
    BadData,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "record runs past the end of the file"),
            FrameError::BadHeader => write!(f, "invalid record header"),
            FrameError::BadType(t) => write!(f, "unknown record type {t}"),
            FrameError::CrcMismatch { torn: true } => write!(f, "crc mismatch (torn write)"),
            FrameError::CrcMismatch { torn: false } => write!(f, "crc mismatch"),
            FrameError::BadData => write!(f, "malformed record data"),
        }
    }
}

/// Outcome of decoding at one offset.
#[derive(Debug)]
pub enum Decoded {
    /// A record and the offset of the next frame.
    Record(Record, usize),
    /// Eight zero bytes (or the end of the file): no more records here.
    End,
}

/// Decodes frames from a segment's bytes, verifying the CRC chain.
pub struct Decoder<'a> {
    buf: &'a [u8],
    crc: u32,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], prev_crc: u32) -> Self {
        Self { buf, crc: prev_crc }
    }

    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Overrides the running CRC (used when a segment's leading CRC record is
    /// adopted as the chain's start).
    pub fn set_crc(&mut self, crc: u32) {
        self.crc = crc;
    }

    /// Decodes the frame at `off`. `off` must be 8-byte aligned.
    pub fn decode_at(&mut self, off: usize) -> Result<Decoded, FrameError> {
        debug_assert_eq!(off % 8, 0, "frames are 8-byte aligned");
        let rest = &self.buf[off.min(self.buf.len())..];
        if rest.len() < 8 {
            return if rest.iter().all(|&b| b == 0) { Ok(Decoded::End) } else { Err(FrameError::Truncated) };
        }
        if rest[..8].iter().all(|&b| b == 0) {
            return Ok(Decoded::End);
        }
        if rest.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let ty = rest[4];
        let pad = rest[5] as usize;
        let magic = u16::from_le_bytes([rest[6], rest[7]]);
        if magic != MAGIC || len > MAX_RECORD_DATA || frame_len(len) != HEADER_LEN + len + pad {
            return Err(FrameError::BadHeader);
        }
        let total = HEADER_LEN + len + pad;
        if rest.len() < total {
            return Err(FrameError::Truncated);
        }
        let rtype = RecordType::from_u8(ty).ok_or(FrameError::BadType(ty))?;
        let stored = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        let data = &rest[HEADER_LEN..HEADER_LEN + len];
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &[ty]), data);
        if crc != stored {
            // Only the header and data count: padding is zero by design.
            return Err(FrameError::CrcMismatch { torn: has_zero_sector(self.buf, off, off + HEADER_LEN + len) });
        }
        let rec = Record::decode_data(rtype, data).ok_or(FrameError::BadData)?;
        self.crc = crc;
        Ok(Decoded::Record(rec, off + total))
    }
}

/// True when some 512-byte sector overlapping `[start, end)` of `buf` is entirely zero
/// (a sector that never reached the disk).
fn has_zero_sector(buf: &[u8], start: usize, end: usize) -> bool {
    const SECTOR: usize = 512;
    let mut s = start / SECTOR * SECTOR;
    while s < end {
        let lo = s.max(start);
        let hi = (s + SECTOR).min(end).min(buf.len());
        if lo < hi && buf[lo..hi].iter().all(|&b| b == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::Metadata(Metadata { node_id: 7, cluster_id: 9 }),
            Record::Entry { index: 1, data: Bytes::from_static(b"hello") },
            Record::State(Bytes::from_static(b"vote")),
            Record::Truncate { since: 1 },
            Record::Entry { index: 1, data: Bytes::new() },
            Record::Commit(Bytes::from_static(b"c")),
            Record::Snapshot { index: 3, data: Bytes::from_static(b"s") },
            Record::Crc(0xdead_beef),
        ]
    }

    #[test]
    fn roundtrip_and_alignment() {
        let mut enc = Encoder::new(42);
        let mut buf = Vec::new();
        for r in sample() {
            enc.encode(&r, &mut buf);
            assert_eq!(buf.len() % 8, 0);
        }
        let mut dec = Decoder::new(&buf, 42);
        let mut off = 0;
        let mut got = Vec::new();
        while let Decoded::Record(r, next) = dec.decode_at(off).unwrap() {
            got.push(r);
            off = next;
        }
        assert_eq!(got, sample());
        assert_eq!(dec.crc(), enc.crc());
    }

    #[test]
    fn chain_detects_wrong_seed() {
        let mut buf = Vec::new();
        Encoder::new(1).encode(&Record::Crc(1), &mut buf);
        assert!(matches!(Decoder::new(&buf, 2).decode_at(0), Err(FrameError::CrcMismatch { .. })));
    }

    #[test]
    fn truncated_and_flipped() {
        let mut buf = Vec::new();
        Encoder::new(0).encode(&Record::Entry { index: 5, data: Bytes::from(vec![1u8; 100]) }, &mut buf);
        let cut = &buf[..buf.len() - 9];
        assert_eq!(Decoder::new(cut, 0).decode_at(0).unwrap_err(), FrameError::Truncated);
        let mut flipped = buf.clone();
        flipped[40] ^= 1;
        assert_eq!(Decoder::new(&flipped, 0).decode_at(0).unwrap_err(), FrameError::CrcMismatch { torn: false });
        let zeros = [0u8; 64];
        assert!(matches!(Decoder::new(&zeros, 0).decode_at(0), Ok(Decoded::End)));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300), seed: u32) {
            let mut dec = Decoder::new(&data, seed);
            let mut off = 0;
            while let Ok(Decoded::Record(_, next)) = dec.decode_at(off) {
                off = next;
            }
        }
    }
}
