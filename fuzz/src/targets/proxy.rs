//! `proxy`: the PROXY protocol v1/v2 header (`src/proxy.rs`, `parse`), which the router reads
//! from any client of a `--proxy-protocol` socket (`src/route/pending.rs`).
//!
//! The router peeks at what has arrived, consumes it all while the answer is `Incomplete`,
//! and then reads exactly the header's bytes. That is sound only if, over the prefixes of any
//! byte stream, the answers are `Incomplete` up to a point and then one answer for good: a
//! header that is complete exactly when its last byte arrives (so nothing after it was
//! consumed), or an error. And `Incomplete` must never be the answer to as many bytes as the
//! router peeks at, or it would wait for bytes it has no room for. Headers as HAProxy writes
//! them (v1 and v2, IPv4 and IPv6, with TLVs, LOCAL) must name their client, whatever the
//! stream carries after them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::proxy::{PEEK_MAX, Parsed, V2_MAX, parse};

pub fn check(data: &[u8]) {
    prefixes(&data[..data.len().min(PEEK_MAX + 16)]);
    round_trips(data);
}

fn prefixes(data: &[u8]) {
    let mut settled: Option<(usize, Parsed)> = None;
    for k in 0..=data.len() {
        let answer = parse(&data[..k]);
        match (&settled, answer) {
            (None, Parsed::Incomplete) => assert!(
                k < PEEK_MAX,
                "Incomplete after {k} bytes, though the router peeks at most {PEEK_MAX}"
            ),
            (None, Parsed::Header { len, client }) => {
                assert_eq!(
                    len, k,
                    "a header must be complete exactly when its last byte arrives"
                );
                settled = Some((k, Parsed::Header { len, client }));
            }
            (None, Parsed::Invalid(why)) => {
                assert!(!why.is_empty());
                settled = Some((k, Parsed::Invalid(why)));
            }
            (Some((at, first @ Parsed::Header { .. })), answer) => assert_eq!(
                &answer, first,
                "after {at} bytes the answer was {first:?}, after {k}: {answer:?}"
            ),
            (Some((at, first)), answer) => assert!(
                matches!(answer, Parsed::Invalid(_)),
                "after {at} bytes the answer was {first:?}, after {k}: {answer:?}"
            ),
        }
    }
}

/// Headers for addresses taken from the input's first 36 bytes, followed on the connection
/// by the rest of it (v2: the start of the rest as TLVs inside the header, too).
fn round_trips(data: &[u8]) {
    let mut b = [0u8; 36];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let after = &data[n..];
    let v4 = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
    let v6 = |o: usize| {
        let octets: [u8; 16] = b[o..o + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let tlvs = &after[..after.len().min(V2_MAX - 16 - 36)];
    for (client, server) in [
        (
            SocketAddr::new(v4(0), port(32)),
            SocketAddr::new(v4(4), port(34)),
        ),
        (
            SocketAddr::new(v6(0), port(32)),
            SocketAddr::new(v6(16), port(34)),
        ),
    ] {
        for (header, named) in [
            (v1(client, server), Some(client)),
            (v2(0x21, client, server, &[]), Some(client)),
            (v2(0x21, client, server, tlvs), Some(client)),
            (v2(0x20, client, server, tlvs), None),
        ] {
            let mut stream = header.clone();
            stream.extend_from_slice(after);
            assert_eq!(
                parse(&stream),
                Parsed::Header {
                    len: header.len(),
                    client: named
                },
                "{}",
                header.escape_ascii()
            );
        }
    }
}

/// `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`.
fn v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

/// A v2 header: `ver_cmd` 0x21 (PROXY) or 0x20 (LOCAL), TCP over the client's family, and
/// `tlvs` after the addresses.
fn v2(ver_cmd: u8, client: SocketAddr, server: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(ver_cmd);
    let mut body = Vec::new();
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            h.push(0x11);
            body.extend_from_slice(&c.octets());
            body.extend_from_slice(&s.octets());
        }
        (c, s) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21);
            body.extend_from_slice(&v6(c).octets());
            body.extend_from_slice(&v6(s).octets());
        }
    }
    body.extend_from_slice(&client.port().to_be_bytes());
    body.extend_from_slice(&server.port().to_be_bytes());
    body.extend_from_slice(tlvs);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}
