//! The route channel's wire format, and its one codec: multinode encodes
//! batches and decodes close notices with these functions, this crate's
//! [`RouteChannel`](crate::RouteChannel) decodes batches and encodes
//! notices with them. Pure functions over bytes; the descriptors travel
//! beside the bytes (`SCM_RIGHTS`), and sending them is the caller's part.
//!
//! This is the reference for workers written in other languages;
//! `examples/python/routed.py` in the multinode repository is a complete
//! one in stdlib Python. All integers are little-endian.
//!
//! # Batches: supervisor → worker
//!
//! One `SOCK_SEQPACKET` datagram per batch of connections:
//!
//! ```text
//! header   8 bytes   "MNRT" | version u8 = 1 | flags u8 = 0 | count u16 (1..=253)
//! record  32 bytes   seq u64 | family u8 | 0 u8 | port u16 | address 16 bytes | 4 zero bytes
//!  × count
//! SCM_RIGHTS         count connected stream sockets, in record order
//! ```
//!
//! - `seq` numbers the supervisor's connections (from 1, unique per
//!   supervisor run).
//! - `family` 4: IPv4, the address in the first 4 bytes; 6: IPv6, all 16
//!   bytes; 0: no address (a connection from a Unix socket; ask the socket,
//!   `getpeername`). `port` is the client's port. With `--proxy-protocol`
//!   the address is the one the PROXY header named, not the TCP peer. An
//!   IPv4 client of a dual-stack socket is sent as IPv4 (family 4).
//! - A message is exactly `8 + 32 × count` bytes ([`HEADER_LEN`],
//!   [`RECORD_LEN`]) and carries exactly `count` descriptors; 253
//!   ([`MAX_BATCH`]) is the kernel's limit per message (`SCM_MAX_FD`), so
//!   receive with room for `8 + 32 × 253 = 8104` bytes ([`MAX_BATCH_LEN`])
//!   of data and 253 descriptors of control data. The descriptors arrive
//!   without close-on-exec unless the receiver asks (`MSG_CMSG_CLOEXEC`).
//! - Receivers ignore `flags` and the reserved bytes; senders write zeros.
//!
//! # Close notices: worker → supervisor
//!
//! Optional; they feed `--route least-conn`, which otherwise counts every
//! connection as open forever:
//!
//! ```text
//! header   8 bytes   "MNRC" | version u8 = 1 | flags u8 = 0 | count u16 (0..=512)
//! seq      8 bytes   u64, once per connection the worker has closed
//!  × count
//! ```
//!
//! At most [`MAX_NOTICE`] seqs per notice: multinode reads notices into a
//! buffer of [`MAX_NOTICE_LEN`] bytes and ignores a longer or malformed
//! one. Send it without blocking (`MSG_DONTWAIT`): a notice lost to a full
//! socket only skews the least-conn count.
//!
//! The channel reaching end of file means its other end was closed: the
//! supervisor sends no more connections (or the worker is gone).
//!
//! # Example
//!
//! ```
//! use multinode_worker::wire::{self, Record};
//!
//! let mut buf = Vec::new();
//! let records = [
//!     Record { seq: 1, peer: Some("192.0.2.1:4242".parse()?) },
//!     Record { seq: 2, peer: None },
//! ];
//! wire::encode_batch(records, &mut buf);
//! assert_eq!(buf.len(), wire::HEADER_LEN + 2 * wire::RECORD_LEN);
//! let batch = wire::decode_batch(&buf)?;
//! assert_eq!(batch.records().collect::<Vec<_>>(), records);
//!
//! wire::encode_notice(&[1, 2], &mut buf);
//! assert_eq!(wire::decode_notice(&buf)?.seqs().collect::<Vec<_>>(), [1, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The first 4 bytes of a batch.
pub const BATCH_MAGIC: [u8; 4] = *b"MNRT";
/// The first 4 bytes of a close notice.
pub const NOTICE_MAGIC: [u8; 4] = *b"MNRC";
/// The protocol version this crate speaks, in both directions.
pub const VERSION: u8 = 1;
/// The header's length: magic, version, flags, count.
pub const HEADER_LEN: usize = 8;
/// One connection's record in a batch.
pub const RECORD_LEN: usize = 32;
/// The most connections one batch carries: the kernel's limit of
/// descriptors per `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub const MAX_BATCH: usize = 253;
/// The longest valid batch: a full one, 8104 bytes.
pub const MAX_BATCH_LEN: usize = HEADER_LEN + RECORD_LEN * MAX_BATCH;
/// The most seqs one close notice may carry.
pub const MAX_NOTICE: usize = 512;
/// The longest valid notice, 4104 bytes.
pub const MAX_NOTICE_LEN: usize = HEADER_LEN + 8 * MAX_NOTICE;

/// One connection's record: its sequence number and the client's address
/// (`None`: family 0, ask the socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    /// The supervisor's sequence number for the connection.
    pub seq: u64,
    /// The client, as the supervisor saw it or the PROXY header named it.
    pub peer: Option<SocketAddr>,
}

/// Why bytes are not a valid batch or notice. Its `Display` is a phrase
/// such as `version 2, this SDK speaks version 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the 8-byte header.
    TooShort {
        /// The message's length.
        len: usize,
    },
    /// The first 4 bytes are not the expected magic.
    BadMagic {
        /// What they are.
        found: [u8; 4],
        /// What was expected: [`BATCH_MAGIC`] or [`NOTICE_MAGIC`].
        expected: [u8; 4],
    },
    /// A version other than [`VERSION`].
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// A count outside `1..=`[`MAX_BATCH`] (a batch) or `0..=`[`MAX_NOTICE`]
    /// (a notice).
    BadCount {
        /// The header's count.
        count: usize,
        /// The smallest count allowed.
        min: usize,
        /// The largest count allowed.
        max: usize,
    },
    /// The length does not match the header's count: the message was
    /// truncated, or has trailing bytes.
    BadLength {
        /// The message's length.
        len: usize,
        /// The header's count.
        count: usize,
        /// The length `count` implies.
        expected: usize,
    },
    /// A record's address family is not 0, 4 or 6.
    BadFamily {
        /// The record's index in the batch, from 0.
        record: usize,
        /// The family byte found.
        family: u8,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooShort { len } => {
                write!(
                    f,
                    "{len} bytes, shorter than the header ({HEADER_LEN} bytes)"
                )
            }
            WireError::BadMagic { found, expected } => write!(
                f,
                "magic \"{}\", not \"{}\"",
                found.escape_ascii(),
                expected.escape_ascii()
            ),
            WireError::BadVersion { found } => {
                write!(f, "version {found}, this SDK speaks version {VERSION}")
            }
            WireError::BadCount { count, min, max } => {
                write!(f, "count {count}, not {min}..={max}")
            }
            WireError::BadLength {
                len,
                count,
                expected,
            } => write!(f, "{len} bytes for {count} records, not {expected}"),
            WireError::BadFamily { record, family } => {
                write!(f, "record {record}: address family {family}")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Encodes one batch into `out`, replacing what it held (its capacity is
/// reused: keep one buffer per sender and no batch allocates).
///
/// IPv4 addresses are written as family 4 as given; map a v4-mapped IPv6
/// address (`::ffff:a.b.c.d`) to IPv4 first if the worker should see IPv4.
///
/// # Panics
///
/// If `records` yields none, or more than [`MAX_BATCH`]: the caller picks
/// the batch, and a batch of any other size cannot be sent.
pub fn encode_batch(records: impl IntoIterator<Item = Record>, out: &mut Vec<u8>) {
    let records = records.into_iter();
    out.clear();
    out.reserve(HEADER_LEN + RECORD_LEN * records.size_hint().0.min(MAX_BATCH));
    header(out, BATCH_MAGIC, 0);
    let mut count = 0usize;
    for r in records {
        count += 1;
        assert!(
            count <= MAX_BATCH,
            "a batch of more than {MAX_BATCH} records"
        );
        let mut rec = [0u8; RECORD_LEN];
        rec[..8].copy_from_slice(&r.seq.to_le_bytes());
        match r.peer {
            Some(SocketAddr::V4(a)) => {
                rec[8] = 4;
                rec[10..12].copy_from_slice(&a.port().to_le_bytes());
                rec[12..16].copy_from_slice(&a.ip().octets());
            }
            Some(SocketAddr::V6(a)) => {
                rec[8] = 6;
                rec[10..12].copy_from_slice(&a.port().to_le_bytes());
                rec[12..28].copy_from_slice(&a.ip().octets());
            }
            None => {}
        }
        out.extend_from_slice(&rec);
    }
    assert!(count > 0, "an empty batch");
    set_count(out, count);
}

/// Checks a received batch: magic, version, a count in `1..=`[`MAX_BATCH`],
/// a length of exactly `8 + 32 × count` bytes, and every record's family.
/// (That `count` descriptors came with it is the receiver's to check.)
pub fn decode_batch(m: &[u8]) -> Result<Batch<'_>, WireError> {
    check_header(m, BATCH_MAGIC, 1..=MAX_BATCH, RECORD_LEN)?;
    let batch = Batch {
        records: &m[HEADER_LEN..],
    };
    if let Some((record, family)) = batch
        .chunks()
        .map(|r| r[8])
        .enumerate()
        .find(|(_, f)| !matches!(f, 0 | 4 | 6))
    {
        return Err(WireError::BadFamily { record, family });
    }
    Ok(batch)
}

/// A checked batch (from [`decode_batch`]): 1 to [`MAX_BATCH`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The records' bytes: a whole number of valid records.
    records: &'a [u8],
}

impl<'a> Batch<'a> {
    /// How many records (and so descriptors) the batch has.
    pub fn len(&self) -> usize {
        self.records.len() / RECORD_LEN
    }

    /// Never true for a decoded batch; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, in order (the descriptors' order).
    pub fn records(&self) -> impl ExactSizeIterator<Item = Record> + 'a {
        self.chunks().map(|r| {
            let seq = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
            let port = u16::from_le_bytes([r[10], r[11]]);
            let addr: [u8; 16] = r[12..28].try_into().expect("16 bytes");
            let peer = match r[8] {
                4 => {
                    let v4 = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
                    Some(SocketAddr::V4(SocketAddrV4::new(v4, port)))
                }
                6 => Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(addr),
                    port,
                    0,
                    0,
                ))),
                // Checked by decode_batch: 0.
                _ => None,
            };
            Record { seq, peer }
        })
    }

    fn chunks(&self) -> std::slice::ChunksExact<'a, u8> {
        self.records.chunks_exact(RECORD_LEN)
    }
}

/// Encodes a close notice for `seqs` into `out`, replacing what it held.
///
/// # Panics
///
/// If `seqs` has more than [`MAX_NOTICE`] entries (send several notices).
pub fn encode_notice(seqs: &[u64], out: &mut Vec<u8>) {
    assert!(
        seqs.len() <= MAX_NOTICE,
        "a notice of more than {MAX_NOTICE} seqs"
    );
    out.clear();
    header(out, NOTICE_MAGIC, seqs.len());
    for s in seqs {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Checks a received close notice: magic, version, a count of at most
/// [`MAX_NOTICE`], and a length of exactly `8 + 8 × count` bytes.
pub fn decode_notice(m: &[u8]) -> Result<Notice<'_>, WireError> {
    check_header(m, NOTICE_MAGIC, 0..=MAX_NOTICE, 8)?;
    Ok(Notice {
        seqs: &m[HEADER_LEN..],
    })
}

/// A checked close notice (from [`decode_notice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice<'a> {
    seqs: &'a [u8],
}

impl<'a> Notice<'a> {
    /// How many connections it reports closed.
    pub fn len(&self) -> usize {
        self.seqs.len() / 8
    }

    /// Whether it reports none (valid, though nothing sends one).
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The seqs of the closed connections.
    pub fn seqs(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.seqs
            .chunks_exact(8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
}

fn header(out: &mut Vec<u8>, magic: [u8; 4], count: usize) {
    out.extend_from_slice(&magic);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&(count as u16).to_le_bytes());
}

fn set_count(out: &mut [u8], count: usize) {
    out[6..8].copy_from_slice(&(count as u16).to_le_bytes());
}

/// Checks a message's header and length: `count` items of `item` bytes,
/// `count` in `counts`.
fn check_header(
    m: &[u8],
    magic: [u8; 4],
    counts: std::ops::RangeInclusive<usize>,
    item: usize,
) -> Result<(), WireError> {
    let Some(head) = m.first_chunk::<HEADER_LEN>() else {
        return Err(WireError::TooShort { len: m.len() });
    };
    let found: [u8; 4] = head[..4].try_into().expect("4 bytes");
    if found != magic {
        return Err(WireError::BadMagic {
            found,
            expected: magic,
        });
    }
    if head[4] != VERSION {
        return Err(WireError::BadVersion { found: head[4] });
    }
    let count = usize::from(u16::from_le_bytes([head[6], head[7]]));
    if !counts.contains(&count) {
        return Err(WireError::BadCount {
            count,
            min: *counts.start(),
            max: *counts.end(),
        });
    }
    let expected = HEADER_LEN + item * count;
    if m.len() != expected {
        return Err(WireError::BadLength {
            len: m.len(),
            count,
            expected,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> SocketAddr {
        "192.0.2.1:4242".parse().unwrap()
    }

    fn v6() -> SocketAddr {
        "[2001:db8::1:2]:443".parse().unwrap()
    }

    /// Every record shape: IPv4, IPv6 (also v4-mapped, sent as given), none,
    /// and the extremes of seq and port.
    fn shapes() -> Vec<Record> {
        vec![
            Record {
                seq: 1,
                peer: Some(v4()),
            },
            Record {
                seq: 2,
                peer: Some(v6()),
            },
            Record { seq: 3, peer: None },
            Record {
                seq: u64::MAX,
                peer: Some("[::ffff:10.0.0.1]:65535".parse().unwrap()),
            },
            Record {
                seq: 0,
                peer: Some("0.0.0.0:0".parse().unwrap()),
            },
        ]
    }

    fn encoded(records: &[Record]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_batch(records.iter().copied(), &mut buf);
        buf
    }

    fn decoded(m: &[u8]) -> Vec<Record> {
        decode_batch(m).unwrap().records().collect()
    }

    #[test]
    fn every_record_shape_round_trips() {
        for r in shapes() {
            assert_eq!(decoded(&encoded(&[r])), [r], "{r:?}");
        }
        let all = shapes();
        assert_eq!(decoded(&encoded(&all)), all);
    }

    #[test]
    fn the_bytes_are_the_documented_ones() {
        let m = encoded(&[
            Record {
                seq: 7,
                peer: Some(v4()),
            },
            Record {
                seq: 8,
                peer: Some(v6()),
            },
        ]);
        assert_eq!(&m[..8], b"MNRT\x01\x00\x02\x00");
        let (a, b) = (&m[8..40], &m[40..72]);
        assert_eq!(&a[..8], &7u64.to_le_bytes());
        assert_eq!(&a[8..12], &[4, 0, 0x92, 0x10]); // family, 0, port 4242 LE
        assert_eq!(&a[12..16], &[192, 0, 2, 1]);
        assert!(a[16..].iter().all(|&b| b == 0));
        assert_eq!(&b[8..12], &[6, 0, 0xbb, 0x01]);
        assert_eq!(
            &b[12..28],
            &"2001:db8::1:2".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&b[28..], &[0; 4]);
    }

    #[test]
    fn batches_of_1_and_253_round_trip() {
        for n in [1, 2, MAX_BATCH - 1, MAX_BATCH] {
            let records: Vec<Record> = (0..n as u64)
                .map(|i| Record {
                    seq: 1000 + i,
                    peer: match i % 3 {
                        0 => Some(SocketAddr::from(([10, 0, 0, 1], i as u16))),
                        1 => Some(v6()),
                        _ => None,
                    },
                })
                .collect();
            let m = encoded(&records);
            assert_eq!(m.len(), HEADER_LEN + RECORD_LEN * n);
            let batch = decode_batch(&m).unwrap();
            assert_eq!((batch.len(), batch.is_empty()), (n, false));
            assert_eq!(batch.records().len(), n);
            assert_eq!(batch.records().collect::<Vec<_>>(), records);
        }
    }

    #[test]
    fn the_buffer_is_replaced_and_reused() {
        let mut buf = b"left over".to_vec();
        encode_batch([Record { seq: 1, peer: None }], &mut buf);
        assert_eq!(buf.len(), HEADER_LEN + RECORD_LEN);
        let full: Vec<Record> = (0..MAX_BATCH as u64)
            .map(|seq| Record { seq, peer: None })
            .collect();
        encode_batch(full.iter().copied(), &mut buf);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        encode_batch(full.iter().copied(), &mut buf);
        assert_eq!(
            (buf.as_ptr(), buf.capacity()),
            (ptr, cap),
            "no reallocation"
        );
        assert_eq!(buf.len(), MAX_BATCH_LEN);
    }

    #[test]
    #[should_panic(expected = "more than 253")]
    fn encoding_254_panics() {
        let mut buf = Vec::new();
        encode_batch((0..254).map(|seq| Record { seq, peer: None }), &mut buf);
    }

    #[test]
    #[should_panic(expected = "an empty batch")]
    fn encoding_none_panics() {
        encode_batch([], &mut Vec::new());
    }

    #[test]
    fn truncated_at_every_length() {
        let m = encoded(&shapes());
        for len in 0..m.len() {
            let e = decode_batch(&m[..len]).unwrap_err();
            if len < HEADER_LEN {
                assert_eq!(e, WireError::TooShort { len });
            } else {
                assert_eq!(
                    e,
                    WireError::BadLength {
                        len,
                        count: 5,
                        expected: m.len()
                    }
                );
            }
        }
        let m = encoded(&shapes()[..1]);
        assert_eq!(
            decode_batch(&m[..7]).unwrap_err().to_string(),
            "7 bytes, shorter than the header (8 bytes)"
        );
        assert_eq!(
            decode_batch(&m[..39]).unwrap_err().to_string(),
            "39 bytes for 1 records, not 40"
        );
    }

    #[test]
    fn oversized_input() {
        // Trailing bytes.
        let mut m = encoded(&shapes()[..1]);
        m.push(0);
        assert_eq!(
            decode_batch(&m).unwrap_err().to_string(),
            "41 bytes for 1 records, not 40"
        );
        // A header that claims fewer records than there are.
        let mut m = encoded(&shapes());
        m[6] = 4;
        assert!(matches!(
            decode_batch(&m),
            Err(WireError::BadLength { count: 4, .. })
        ));
        // Counts beyond the limit, with or without the bytes to match.
        for count in [254usize, 255, 1000, 65535] {
            let mut m = encoded(&shapes()[..1]);
            m[6..8].copy_from_slice(&(count as u16).to_le_bytes());
            let e = WireError::BadCount {
                count,
                min: 1,
                max: MAX_BATCH,
            };
            assert_eq!(decode_batch(&m), Err(e.clone()));
            m.resize(HEADER_LEN + RECORD_LEN * count, 0);
            assert_eq!(decode_batch(&m), Err(e));
        }
        let mut m = encoded(&shapes()[..1]);
        m[6..8].copy_from_slice(&254u16.to_le_bytes());
        assert_eq!(
            decode_batch(&m).unwrap_err().to_string(),
            "count 254, not 1..=253"
        );
        // Count 0, even with nothing after the header.
        let zero = b"MNRT\x01\x00\x00\x00";
        assert_eq!(
            decode_batch(zero).unwrap_err().to_string(),
            "count 0, not 1..=253"
        );
    }

    #[test]
    fn bad_magic_version_and_family() {
        let good = encoded(&shapes());
        let mut m = good.clone();
        m[..4].copy_from_slice(b"MNRC");
        assert_eq!(
            decode_batch(&m).unwrap_err().to_string(),
            r#"magic "MNRC", not "MNRT""#
        );
        m[..4].copy_from_slice(&[0, 0xff, b'\n', b'"']);
        assert!(matches!(
            decode_batch(&m),
            Err(WireError::BadMagic {
                found: [0, 0xff, b'\n', b'"'],
                ..
            })
        ));
        for v in [0u8, 2, 255] {
            let mut m = good.clone();
            m[4] = v;
            assert_eq!(decode_batch(&m), Err(WireError::BadVersion { found: v }));
        }
        let mut m = good.clone();
        m[4] = 2;
        assert_eq!(
            decode_batch(&m).unwrap_err().to_string(),
            "version 2, this SDK speaks version 1"
        );
        for family in [1u8, 5, 10, 255] {
            let mut m = good.clone();
            m[HEADER_LEN + 2 * RECORD_LEN + 8] = family;
            assert_eq!(
                decode_batch(&m),
                Err(WireError::BadFamily { record: 2, family })
            );
        }
        // A notice is not a batch, nor a batch a notice.
        let mut n = Vec::new();
        encode_notice(&[1], &mut n);
        assert!(matches!(decode_batch(&n), Err(WireError::BadMagic { .. })));
        assert!(matches!(
            decode_notice(&good),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn flags_and_reserved_bytes_are_ignored() {
        let mut m = encoded(&shapes()[..1]);
        m[5] = 0x80;
        m[HEADER_LEN + 9] = 7;
        m[HEADER_LEN + 28..HEADER_LEN + 32].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(decoded(&m), &shapes()[..1]);
        // An IPv4 record's unused address bytes too.
        m[HEADER_LEN + 16] = 9;
        assert_eq!(decoded(&m), &shapes()[..1]);
    }

    #[test]
    fn notices_round_trip() {
        let mut buf = Vec::new();
        let full: Vec<u64> = (0..MAX_NOTICE as u64)
            .map(|i| i * 3 + u64::MAX / 2)
            .collect();
        for seqs in [&[][..], &[1], &[u64::MAX, 0, 42], &full] {
            encode_notice(seqs, &mut buf);
            assert_eq!(buf.len(), HEADER_LEN + 8 * seqs.len());
            let n = decode_notice(&buf).unwrap();
            assert_eq!((n.len(), n.is_empty()), (seqs.len(), seqs.is_empty()));
            assert_eq!(n.seqs().collect::<Vec<_>>(), seqs);
        }
        assert_eq!(buf.len(), MAX_NOTICE_LEN);
        encode_notice(&[1, 2], &mut buf);
        let mut expected = b"MNRC\x01\x00\x02\x00".to_vec();
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(buf, expected);
    }

    #[test]
    #[should_panic(expected = "more than 512")]
    fn encoding_a_notice_of_513_panics() {
        encode_notice(&[0; MAX_NOTICE + 1], &mut Vec::new());
    }

    #[test]
    fn malformed_notices() {
        let mut good = Vec::new();
        encode_notice(&[5, 6, 7], &mut good);
        for len in 0..good.len() {
            assert!(decode_notice(&good[..len]).is_err(), "{len} bytes");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            decode_notice(&long).unwrap_err(),
            WireError::BadLength {
                len: 33,
                count: 3,
                expected: 32
            }
        );
        let mut m = good.clone();
        m[4] = 2;
        assert_eq!(
            decode_notice(&m).unwrap_err(),
            WireError::BadVersion { found: 2 }
        );
        let mut m = vec![0u8; HEADER_LEN + 8 * 513];
        m[..8].copy_from_slice(b"MNRC\x01\x00\x01\x02");
        assert_eq!(
            decode_notice(&m).unwrap_err().to_string(),
            "count 513, not 0..=512"
        );
        assert!(decode_notice(b"junk").is_err());
        assert!(decode_notice(b"MNRC\x01\x00\x00\x00").unwrap().is_empty());
    }
}
