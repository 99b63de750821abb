//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms), which a load balancer
//! sends first on every connection so the real client address survives it.
//!
//! [`parse`] looks at the bytes received so far (read with MSG_PEEK, so nothing after the
//! header is consumed) and says whether a full header is there, how long it is, and which
//! client it names; the caller then reads exactly that many bytes and hands the rest of the
//! stream to the worker untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The most a v2 header may take here (TLVs included); larger ones are rejected.
pub const V2_MAX: usize = 16 + 512;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `client` is None for `UNKNOWN` / `LOCAL` (health checks):
    /// the connection's own peer address stands.
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid(&'static str),
}

/// How many bytes to peek so that any acceptable header fits.
pub const PEEK_MAX: usize = V2_MAX;

pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    Parsed::Invalid("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Parsed::Invalid("no PROXY protocol header");
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 header too long")
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Parsed::Invalid("PROXY v1 header too long");
    }
    let Ok(line) = std::str::from_utf8(&buf[prefix.len()..end]) else {
        return Parsed::Invalid("PROXY v1 header is not text");
    };
    let f: Vec<&str> = line.split(' ').collect();
    match f.first() {
        Some(&"UNKNOWN") => return Parsed::Header { len, client: None },
        Some(&"TCP4") | Some(&"TCP6") if f.len() == 5 => {}
        _ => return Parsed::Invalid("malformed PROXY v1 header"),
    }
    let ip: Option<IpAddr> = if f[0] == "TCP4" {
        f[1].parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else {
        f[1].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    };
    let port = f[3].parse::<u16>().ok();
    let valid_dst = f[2].parse::<IpAddr>().is_ok() && f[4].parse::<u16>().is_ok();
    match (ip, port, valid_dst) {
        (Some(ip), Some(port), true) => Parsed::Header {
            len,
            client: Some(SocketAddr::new(ip, port)),
        },
        _ => Parsed::Invalid("malformed PROXY v1 addresses"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let n = buf.len().min(12);
    if buf[..n] != V2_SIG[..n] {
        return Parsed::Invalid("no PROXY protocol header");
    }
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("unsupported PROXY protocol version");
    }
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > V2_MAX {
        return Parsed::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let a = &buf[16..len];
    match ver_cmd & 0x0f {
        0x0 => return Parsed::Header { len, client: None }, // LOCAL
        0x1 => {}                                           // PROXY
        _ => return Parsed::Invalid("unknown PROXY v2 command"),
    }
    match buf[13] {
        // TCP or UDP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 | 0x12 if a.len() >= 12 => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Parsed::Header {
                len,
                client: Some(SocketAddr::new(IpAddr::V4(ip), port)),
            }
        }
        // Over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 | 0x22 if a.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Parsed::Header {
                len,
                client: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)),
            }
        }
        0x00 => Parsed::Header { len, client: None }, // UNSPEC
        0x11 | 0x12 | 0x21 | 0x22 => Parsed::Invalid("PROXY v2 address block too short"),
        _ => Parsed::Header { len, client: None }, // Unix or other: keep the peer address
    }
}

/// A network allowed to send PROXY headers (`--proxy-from`): an IPv4 or IPv6 address and a
/// prefix length. A bare address is a network of one (/32, /128). An IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it is, so it matches the IPv4
/// clients of a dual-stack socket, which are seen as IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(ip.to_bits()), self.len, 32) == u128::from(net.to_bits())
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask(ip.to_bits(), self.len, 128) == net.to_bits(),
            _ => false,
        }
    }
}

/// `bits` (an address of `width` bits) with all but its first `len` bits cleared.
fn mask(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let keep = u32::from(width - len);
    (bits >> keep) << keep
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (`192.0.2.7`, `::1`).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let bad = || {
        format!("'{s}' is not an address or network such as 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32")
    };
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let width: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => width,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= width && !l.starts_with('+') => n,
            _ => return Err(format!("'{s}': the prefix length must be 0 to {width}")),
        },
    };
    // An IPv4-mapped network is the IPv4 network it names.
    let mapped = match ip {
        IpAddr::V6(v6) if len >= 96 => v6.to_ipv4_mapped(),
        _ => None,
    };
    let (ip, len, width) = match mapped {
        Some(v4) => (IpAddr::V4(v4), len - 96, 32),
        None => (ip, len, width),
    };
    let bits = match ip {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    };
    let net_bits = mask(bits, len, width);
    if net_bits != bits {
        let net = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from_bits(net_bits as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from_bits(net_bits)),
        };
        return Err(format!(
            "'{s}' has bits set past its /{len} prefix; did you mean {net}/{len}?"
        ));
    }
    Ok(Cidr { net: ip, len })
}

/// A v2 header for `client` → `server` (TCP), as HAProxy would send it.
#[cfg(test)]
pub fn encode_v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.push(0x21);
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&s.port().to_be_bytes());
        }
        (c, s) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(c).octets());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&s.port().to_be_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 40,
                client: client("192.0.2.7:51234")
            }
        );
        let h = b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 443\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: h.len(),
                client: client("[2001:db8::9]:4000")
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7 10.0"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid(_)));
        assert!(matches!(
            parse(b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.1.1.1 10.0.0.1 1\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(&[b'P'; 200]), Parsed::Invalid(_)));
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    #[test]
    fn v2() {
        let c: SocketAddr = "198.51.100.4:6000".parse().unwrap();
        let s: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut h = encode_v2(c, s);
        let len = h.len();
        h.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len,
                client: Some(c)
            }
        );
        assert_eq!(parse(&h[..10]), Parsed::Incomplete);
        assert_eq!(parse(&h[..20]), Parsed::Incomplete);
        let c6: SocketAddr = "[2001:db8::5]:7000".parse().unwrap();
        let h6 = encode_v2(c6, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            parse(&h6),
            Parsed::Header {
                len: h6.len(),
                client: Some(c6)
            }
        );
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                client: None
            }
        );
        let mut bad = h.clone();
        bad[12] = 0x31;
        assert!(matches!(parse(&bad), Parsed::Invalid(_)));
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
    }

    #[test]
    fn cidrs() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.9.9.9")), "an IPv4-mapped peer");
        assert!(!net.contains(ip("2001:db8::1")));
        let one = parse_cidr("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = parse_cidr("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        let all = parse_cidr("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::2")));
        assert!(parse_cidr("::/0").unwrap().contains(ip("2001:db8::1")));
        let mapped = parse_cidr("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(ip("10.3.3.3")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "nonsense",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        let host_bits = parse_cidr("10.0.0.1/8").unwrap_err();
        assert!(host_bits.contains("did you mean 10.0.0.0/8"), "{host_bits}");
    }
}
