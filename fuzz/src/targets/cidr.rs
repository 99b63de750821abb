//! `cidr`: the networks of `--proxy-from` (`src/proxy.rs`, `parse_cidr`): whose PROXY
//! headers the router believes, from the command line or the config file.
//!
//! A network that parses is shown as it is stored, and what it shows parses back to it; it
//! holds its own address and every address that differs only past the prefix, and none that
//! differs within it; an IPv4 network holds the IPv4-mapped IPv6 forms of its addresses (a
//! dual-stack socket's IPv4 clients) and no IPv6 network holds an IPv4 address. A refusal
//! quotes the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::proxy::parse_cidr;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cidr = match parse_cidr(text) {
        Ok(c) => c,
        Err(msg) => {
            assert!(msg.contains(text), "the message quotes the input: {msg}");
            return;
        }
    };
    let shown = cidr.to_string();
    assert_eq!(parse_cidr(&shown), Ok(cidr), "{text:?} is shown as {shown}");
    let (net, len) = shown.split_once('/').expect("ADDR/LEN");
    let net: IpAddr = net.parse().expect("an address");
    let len: u32 = len.parse().expect("a prefix length");
    match net {
        IpAddr::V4(v4) => {
            assert!(len <= 32, "{shown}");
            let bits = v4.to_bits();
            for i in 0..32 {
                let other = Ipv4Addr::from_bits(bits ^ (1 << (31 - i)));
                let inside = i >= len;
                assert_eq!(cidr.contains(IpAddr::V4(other)), inside, "{shown}: {other}");
                let mapped = IpAddr::V6(other.to_ipv6_mapped());
                assert_eq!(cidr.contains(mapped), inside, "{shown}: {mapped}");
            }
        }
        IpAddr::V6(v6) => {
            assert!(len <= 128, "{shown}");
            let bits = v6.to_bits();
            for i in 0..128 {
                let other = Ipv6Addr::from_bits(bits ^ (1 << (127 - i)));
                // An IPv4-mapped address is the IPv4 address it maps, never in an IPv6 network.
                let inside = i >= len && other.to_ipv4_mapped().is_none();
                assert_eq!(cidr.contains(IpAddr::V6(other)), inside, "{shown}: {other}");
            }
            assert!(!cidr.contains(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        }
    }
    assert_eq!(
        cidr.contains(net),
        !matches!(net, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
    );
}
