//! The bytes of a backup on their way: compression (gzip, zstd or none)
//! as a streaming encoder and decoder, and [`Trailer`], which checks a
//! snapshot's trailing SHA-256 (kvd's and etcd's streams both end with the
//! SHA-256 of everything before it) without holding the snapshot.

use std::io::Write;

use sha2::{Digest, Sha256};

/// How a backup object is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// What follows `.snap` in the object's name.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A streaming compressor: bytes in with [`Encoder::write`], compressed
/// bytes out with [`Encoder::take`], whatever is left with [`Encoder::finish`].
pub enum Encoder {
    None(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    pub fn new(c: Compression) -> std::io::Result<Encoder> {
        Ok(match c {
            Compression::None => Encoder::None(Vec::new()),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6))),
            // Level 3, zstd's default: about 300 MB/s a core.
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
        })
    }

    pub fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::None(v) => {
                v.extend_from_slice(b);
                Ok(())
            }
            Encoder::Gzip(e) => e.write_all(b),
            Encoder::Zstd(e) => e.write_all(b),
        }
    }

    /// The compressed bytes produced so far and not yet taken.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Encoder::None(v) => v,
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        })
    }

    /// The last compressed bytes.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::None(v) => Ok(v),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// A streaming decompressor writing what it decodes to `W`.
pub enum Decoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzDecoder<W>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
}

impl<W: Write> Decoder<W> {
    pub fn new(c: Compression, out: W) -> std::io::Result<Decoder<W>> {
        Ok(match c {
            Compression::None => Decoder::None(out),
            Compression::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(out)),
            Compression::Zstd => Decoder::Zstd(zstd::stream::write::Decoder::new(out)?),
        })
    }

    pub fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Decoder::None(w) => w.write_all(b),
            Decoder::Gzip(d) => d.write_all(b),
            Decoder::Zstd(d) => d.write_all(b),
        }
    }

    /// The writer, once everything is decoded; an error if the compressed
    /// stream ended early.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Decoder::None(w) => Ok(w),
            Decoder::Gzip(d) => d.finish(),
            Decoder::Zstd(mut d) => {
                d.flush()?;
                Ok(d.into_inner())
            }
        }
    }
}

/// Checks a stream's trailing SHA-256 as it passes: everything but the
/// last 32 bytes goes into the hash, the last 32 are kept to compare.
#[derive(Default)]
pub struct Trailer {
    sha: Sha256,
    tail: Vec<u8>,
    len: u64,
}

const HASH_LEN: usize = 32;

impl Trailer {
    pub fn update(&mut self, b: &[u8]) {
        self.len += b.len() as u64;
        if b.len() >= HASH_LEN {
            self.sha.update(&self.tail);
            self.sha.update(&b[..b.len() - HASH_LEN]);
            self.tail.clear();
            self.tail.extend_from_slice(&b[b.len() - HASH_LEN..]);
            return;
        }
        self.tail.extend_from_slice(b);
        if self.tail.len() > HASH_LEN {
            let over = self.tail.len() - HASH_LEN;
            self.sha.update(&self.tail[..over]);
            self.tail.drain(..over);
        }
    }

    /// Bytes seen, trailer included.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The SHA-256 when the trailer matches it; what was found otherwise.
    pub fn finish(self) -> Result<[u8; 32], String> {
        if self.tail.len() < HASH_LEN {
            return Err(format!("{} bytes: too short to hold a snapshot and its SHA-256", self.len));
        }
        let got: [u8; 32] = self.sha.finalize().into();
        if got[..] != self.tail[..] {
            return Err(format!(
                "SHA-256 mismatch over {} bytes: the data hashes to {}, the trailer says {}",
                self.len - HASH_LEN as u64,
                hex(&got),
                hex(&self.tail)
            ));
        }
        Ok(got)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_trailer(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.extend_from_slice(&Sha256::digest(data));
        v
    }

    proptest! {
        /// Whatever the pieces, the trailer of an intact stream matches
        /// and one flipped byte anywhere is caught.
        #[test]
        fn trailer_checks_any_split(data in proptest::collection::vec(any::<u8>(), 0..3000),
                                    cuts in proptest::collection::vec(0usize..3100, 0..8),
                                    flip in any::<prop::sample::Index>()) {
            let stream = with_trailer(&data);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort();
            let feed = |s: &[u8]| {
                let mut t = Trailer::default();
                let mut at = 0;
                for &c in &cuts {
                    t.update(&s[at..c]);
                    at = c;
                }
                t.update(&s[at..]);
                t
            };
            let t = feed(&stream);
            prop_assert_eq!(t.len(), stream.len() as u64);
            prop_assert_eq!(t.finish().ok(), Some(<[u8; 32]>::from(Sha256::digest(&data))));
            let mut bad = stream.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1;
            prop_assert!(feed(&bad).finish().is_err());
        }

        /// What an encoder makes, the decoder of the same compression gives back.
        #[test]
        fn compression_round_trips(data in proptest::collection::vec(any::<u8>(), 0..20000), step in 1usize..5000) {
            for c in Compression::ALL {
                let mut e = Encoder::new(c).expect("encoder");
                let mut out = Vec::new();
                for piece in data.chunks(step) {
                    e.write(piece).expect("write");
                    out.extend(e.take());
                }
                out.extend(e.finish().expect("finish"));
                let mut d = Decoder::new(c, Vec::new()).expect("decoder");
                for piece in out.chunks(step) {
                    d.write(piece).expect("decode");
                }
                prop_assert_eq!(&d.finish().expect("end"), &data);
            }
        }
    }

    #[test]
    fn a_cut_compressed_stream_never_decodes_whole() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut e = Encoder::new(c).expect("encoder");
            e.write(&vec![7u8; 100_000]).expect("write");
            let mut out = e.take();
            out.extend(e.finish().expect("finish"));
            let mut d = Decoder::new(c, Vec::new()).expect("decoder");
            d.write(&out[..out.len() / 2]).expect("decode");
            // gzip notices; zstd's streaming decoder gives what it has, and
            // the snapshot's own trailer catches the rest (Trailer).
            if let Ok(v) = d.finish() {
                assert!(v.len() < 100_000, "{c:?}");
            }
        }
    }
}
