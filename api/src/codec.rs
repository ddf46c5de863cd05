//! The gRPC codec of every generated service: prost's, with one answer
//! changed. A request nested too deeply to decode (prost stops at 100 levels)
//! gets etcd's `InvalidArgument: etcdserver: too many operations in txn
//! request`, which is what etcd answers for a txn nested that deep, instead
//! of gRPC's `Internal` with prost's field path repeated a hundred times.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// etcd's message for a txn with too many operations (`ErrGRPCTooManyOps`).
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

/// [`ProstCodec`] with [`EtcdDecoder`] (see the module comment).
#[derive(Debug)]
pub struct EtcdCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for EtcdCodec<T, U> {
    fn default() -> Self {
        EtcdCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for EtcdCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = EtcdDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        EtcdDecoder(self.0.decoder())
    }
}

/// Prost's decoder, answering a too-deep message as etcd does.
#[derive(Debug)]
pub struct EtcdDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for EtcdDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(as_etcd)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The answer to a request that does not decode, given tonic's (`Internal`
/// with prost's message): etcd's for one nested too deeply, else tonic's.
pub fn as_etcd(decode_failed: Status) -> Status {
    if decode_failed.message().contains("recursion limit reached") {
        Status::invalid_argument(TOO_MANY_OPS)
    } else {
        decode_failed
    }
}
