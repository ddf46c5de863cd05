//! The `keyMeta` rows ([`Table::KeyMeta`]): for each `key` row, under the
//! same revision key, its mvccpb.KeyValue without the value and the mod
//! revision (the row's key holds that). treeIndex is rebuilt from these at
//! start: at 1 KiB values they are a twentieth of the bytes to read.
//!
//! Every write of a `key` row writes its `keyMeta` row in the same backend
//! batch, and compaction removes both in one transaction. A file where the
//! two tables disagree (written by a build that kept no `keyMeta`, or
//! damaged) is caught at start by [`Backend::same_keys`] or by a row that
//! does not decode, and `keyMeta` is rebuilt from `key`.
//!
//! [`Table::KeyMeta`]: crate::backend::Table::KeyMeta
//! [`Backend::same_keys`]: crate::backend::Backend::same_keys

use bytes::{BufMut, Bytes, BytesMut};
use kvd_api::mvccpb::KeyValue;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// The `keyMeta` row of `kv`: a KeyValue message with fields 1 (key),
/// 2 (create revision), 4 (version) and 6 (lease), each left out when
/// zero, as prost leaves them; `KeyValue::decode` reads it back.
pub fn encode(kv: &KeyValue) -> Bytes {
    let ints = [(2, kv.create_revision), (4, kv.version), (6, kv.lease)];
    let len = key_len(1)
        + encoded_len_varint(kv.key.len() as u64)
        + kv.key.len()
        + ints.iter().filter(|(_, v)| *v != 0).map(|(t, v)| key_len(*t) + encoded_len_varint(*v as u64)).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(kv.key.len() as u64, &mut out);
    out.put_slice(&kv.key);
    for (tag, v) in ints {
        if v != 0 {
            encode_key(tag, WireType::Varint, &mut out);
            encode_varint(v as u64, &mut out);
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// A row reads back as the KeyValue less its value and mod revision,
    /// and is the bytes prost writes for that message.
    #[test]
    fn a_row_is_the_key_value_without_value_and_mod_revision() {
        for kv in [
            KeyValue {
                key: b"/registry/pods/a".to_vec(),
                create_revision: 7,
                mod_revision: 9,
                version: 3,
                value: vec![1; 1024],
                lease: 0x1234_5678_9abc,
            },
            KeyValue { key: b"k".to_vec(), create_revision: 0, mod_revision: 4, version: 0, value: vec![], lease: -1 },
            KeyValue {
                key: vec![0xff; 300],
                create_revision: i64::MAX,
                mod_revision: 1,
                version: 1,
                value: b"v".to_vec(),
                lease: 0,
            },
        ] {
            let row = encode(&kv);
            let want = KeyValue { value: Vec::new(), mod_revision: 0, ..kv.clone() };
            assert_eq!(KeyValue::decode(row.clone()).unwrap(), want);
            assert_eq!(row.to_vec(), want.encode_to_vec(), "{kv:?}");
        }
    }
}
