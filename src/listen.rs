//! The `--listen` value: `[NAME=]ADDR` (TCP v4/v6, `:PORT` for every interface, or
//! `unix:PATH`) and its parser, the clap value parser of `--listen` and of the config file's
//! `listen` key. Binding what it names is `socket`'s business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// Longest path a `sockaddr_un` holds (108 bytes with the terminating NUL).
const UNIX_PATH_MAX: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// `:PORT`: every interface, one dual-stack IPv6 socket where the machine has IPv6.
    AnyTcp(u16),
    Unix(PathBuf),
}

/// One `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// The name in LISTEN_FDNAMES; empty until the config gives unnamed sockets `listenN`.
    pub name: String,
    pub addr: ListenAddr,
    /// The value as the user wrote it, for messages.
    pub text: String,
}

/// Parses `[NAME=]ADDR` (clap value parser for `--listen`).
pub fn parse_listen(s: &str) -> std::result::Result<ListenSpec, String> {
    let (name, addr_text) = match s.split_once('=') {
        Some((n, rest)) if !n.contains(':') && !n.contains('/') => {
            if !valid_name(n) {
                return Err(format!(
                    "'{n}' is not a socket name: use letters, digits, '_', '-' or '.'"
                ));
            }
            (n.to_string(), rest)
        }
        _ => (String::new(), s),
    };
    let addr = parse_addr(addr_text)?;
    Ok(ListenSpec {
        name,
        addr,
        text: s.to_string(),
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn parse_addr(s: &str) -> std::result::Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path, e.g. unix:/run/app.sock".into());
        }
        if path.starts_with('@') {
            return Err(format!(
                "'{s}': abstract Unix sockets are not supported (any local user can reach them); use a path"
            ));
        }
        if path.contains('\0') {
            return Err(format!(
                "'{}': a path cannot hold a NUL byte",
                s.escape_debug()
            ));
        }
        if path.len() > UNIX_PATH_MAX {
            return Err(format!(
                "Unix socket path is {} bytes long, the limit is {UNIX_PATH_MAX}: choose a shorter path",
                path.len()
            ));
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    let bad = || {
        format!(
            "'{s}' is not an address: use HOST:PORT (127.0.0.1:8080), :PORT, [::1]:PORT or unix:PATH"
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{s}': port '{port}' is not a number from 0 to 65535"))?;
    let ip: IpAddr = match host {
        "" | "*" => return Ok(ListenAddr::AnyTcp(port)),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h if h.starts_with('[') && h.ends_with(']') => {
            IpAddr::V6(h[1..h.len() - 1].parse::<Ipv6Addr>().map_err(|_| bad())?)
        }
        h => h.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| {
            if h.contains(':') {
                format!("'{s}': write an IPv6 address in brackets, e.g. [{h}]:{port}")
            } else {
                bad()
            }
        })?,
    };
    Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> ListenAddr {
        parse_listen(s).unwrap().addr
    }

    #[test]
    fn listen_specs() {
        assert_eq!(
            addr("127.0.0.1:8080"),
            ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(addr(":80"), ListenAddr::AnyTcp(80));
        assert_eq!(addr("*:80"), ListenAddr::AnyTcp(80));
        assert_eq!(
            addr("[::1]:9000"),
            ListenAddr::Tcp("[::1]:9000".parse().unwrap())
        );
        assert_eq!(
            addr("localhost:1"),
            ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            addr("unix:/run/a=b.sock"),
            ListenAddr::Unix("/run/a=b.sock".into())
        );
        let named = parse_listen("admin=unix:/run/app.sock").unwrap();
        assert_eq!(named.name, "admin");
        assert_eq!(named.addr, ListenAddr::Unix("/run/app.sock".into()));
        assert_eq!(parse_listen("web=:8080").unwrap().name, "web");
    }

    #[test]
    fn bad_listen_specs() {
        for bad in [
            "8080",
            "127.0.0.1",
            "1.2.3.4:99999",
            "host.example:80",
            "::1:80",
            "unix:",
            "bad name=:80",
            "unix:@abstract",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad} should be rejected");
        }
        // Found by the `listen` fuzz target: a path with a NUL byte (the config file can
        // give one) was accepted.
        let err = parse_listen("web=unix:/run/a\0b.sock").unwrap_err();
        assert!(
            err.contains("NUL") && err.contains(r"unix:/run/a\0b.sock"),
            "{err}"
        );
        let long = format!("unix:/tmp/{}", "x".repeat(200));
        assert!(parse_listen(&long).unwrap_err().contains("limit is 107"));
    }
}
