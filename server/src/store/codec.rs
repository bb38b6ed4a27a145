//! How the store encodes records: a format version byte in front of each
//! value's JSON, and a bound on the encoded size.

use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

/// Format version written in front of every record. Bump it when a record's
/// encoding changes incompatibly, and teach `decode` to read the old one.
pub const RECORD_FORMAT: u8 = 1;

/// Largest encoded record the store writes. sled keeps values above 128 KiB
/// as separate blob files, and one such record once froze the store thread
/// inside `flush`; `api::convert` bounds every field so that real records
/// stay far below this, and this refuses whatever slipped through.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

pub(crate) fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![RECORD_FORMAT];
    serde_json::to_writer(&mut bytes, record).map_err(StoreError::Encode)?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge { bytes: bytes.len() });
    }
    Ok(bytes)
}

pub(crate) fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => {
            serde_json::from_slice(body).map_err(|source| StoreError::Decode { tree, source })
        }
        Some((&format, _)) => Err(StoreError::UnknownFormat { tree, format }),
        None => Err(StoreError::UnknownFormat { tree, format: 0 }),
    }
}
