//! `route_wire`: the route channel's codec in the worker SDK (`worker-sdk/src/wire.rs`). A
//! worker decodes the supervisor's batches with `decode_batch`; the supervisor decodes the
//! workers' close notices with `decode_notice` (a worker is not trusted).
//!
//! What decodes is exactly `8 + 32 × count` (or `8 + 8 × count`) bytes with a count in range,
//! yields that many records, and encodes back to the same bytes with the ignored ones (flags,
//! reserved, an address's unused bytes) zeroed; what does not decode is refused for the first
//! rule it breaks, in the order the format lists them. The input is tried as it is and with
//! each magic written over its first bytes, so that both decoders see every header.

use multinode_worker::wire::{
    self, BATCH_MAGIC, HEADER_LEN, MAX_BATCH, MAX_NOTICE, NOTICE_MAGIC, RECORD_LEN, VERSION,
    WireError,
};

pub fn check(data: &[u8]) {
    batch(data);
    notice(data);
    if data.len() >= 4 {
        for magic in [BATCH_MAGIC, NOTICE_MAGIC] {
            let mut m = data.to_vec();
            m[..4].copy_from_slice(&magic);
            batch(&m);
            notice(&m);
        }
    }
}

fn batch(m: &[u8]) {
    match wire::decode_batch(m) {
        Ok(batch) => {
            let count = batch.len();
            assert!((1..=MAX_BATCH).contains(&count) && !batch.is_empty());
            assert_eq!(m.len(), HEADER_LEN + RECORD_LEN * count);
            assert_eq!(usize::from(u16::from_le_bytes([m[6], m[7]])), count);
            let records: Vec<_> = batch.records().collect();
            assert_eq!(records.len(), count);
            let mut out = Vec::new();
            wire::encode_batch(records.iter().copied(), &mut out);
            assert_eq!(out, canonical_batch(m), "decode then encode");
            let again: Vec<_> = wire::decode_batch(&out)
                .expect("an encoded batch decodes")
                .records()
                .collect();
            assert_eq!(again, records);
        }
        Err(e) => refused(m, &e, BATCH_MAGIC, 1, MAX_BATCH, RECORD_LEN),
    }
}

fn notice(m: &[u8]) {
    match wire::decode_notice(m) {
        Ok(notice) => {
            let count = notice.len();
            assert!(count <= MAX_NOTICE);
            assert_eq!(notice.is_empty(), count == 0);
            assert_eq!(m.len(), HEADER_LEN + 8 * count);
            let seqs: Vec<u64> = notice.seqs().collect();
            assert_eq!(seqs.len(), count);
            let mut out = Vec::new();
            wire::encode_notice(&seqs, &mut out);
            let mut expected = m.to_vec();
            expected[5] = 0; // flags
            assert_eq!(out, expected, "decode then encode");
        }
        Err(e) => refused(m, &e, NOTICE_MAGIC, 0, MAX_NOTICE, 8),
    }
}

/// `m` as the encoder writes what it decodes to: flags, reserved bytes and the address bytes
/// a record's family does not use are zero.
fn canonical_batch(m: &[u8]) -> Vec<u8> {
    let mut out = m.to_vec();
    out[5] = 0;
    for r in out[HEADER_LEN..].chunks_exact_mut(RECORD_LEN) {
        r[9] = 0;
        // Up to the end of the address: 4 bytes of IPv4, 16 of IPv6, none (nor a port) for 0.
        let used = match r[8] {
            4 => 16,
            6 => 28,
            _ => 10,
        };
        r[used..].fill(0);
    }
    out
}

/// A refusal names the first rule `m` breaks.
fn refused(m: &[u8], e: &WireError, magic: [u8; 4], min: usize, max: usize, item: usize) {
    assert!(!e.to_string().is_empty());
    let expected = if m.len() < HEADER_LEN {
        WireError::TooShort { len: m.len() }
    } else if m[..4] != magic {
        WireError::BadMagic {
            found: m[..4].try_into().expect("4 bytes"),
            expected: magic,
        }
    } else if m[4] != VERSION {
        WireError::BadVersion { found: m[4] }
    } else {
        let count = usize::from(u16::from_le_bytes([m[6], m[7]]));
        if !(min..=max).contains(&count) {
            WireError::BadCount { count, min, max }
        } else if m.len() != HEADER_LEN + item * count {
            WireError::BadLength {
                len: m.len(),
                count,
                expected: HEADER_LEN + item * count,
            }
        } else {
            // Only a batch has more to check: the families.
            let (record, family) = m[HEADER_LEN..]
                .chunks_exact(RECORD_LEN)
                .map(|r| r[8])
                .enumerate()
                .find(|(_, f)| !matches!(f, 0 | 4 | 6))
                .expect("a batch refused for a family has a bad one");
            WireError::BadFamily { record, family }
        }
    };
    assert_eq!(*e, expected);
}
