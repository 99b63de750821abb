//! Connections whose PROXY protocol header is still arriving (`--proxy-protocol`): read
//! without blocking, exactly the header's bytes, with a deadline (`--proxy-timeout`).
//!
//! At most [`MAX_PENDING`] connections wait at once. Each counts against its source (see
//! [`source_of`]); when the limit is reached, the source holding the most waiting connections
//! loses its oldest one, so idle connections from one source cannot lock out another.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};

/// Connections waiting for their PROXY header at most; past it, the busiest source's oldest
/// is closed.
pub const MAX_PENDING: usize = 1024;

/// What a waiting connection counts against: its client's IPv4 address, or the /64 network of
/// its IPv6 address (one host usually has a whole /64); `None` for a Unix socket.
pub type Source = Option<IpAddr>;

pub fn source_of(peer: Option<SocketAddr>) -> Source {
    peer.map(|p| match p.ip().to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() >> 64 << 64)),
        v4 => v4,
    })
}

/// A connection whose PROXY header is still arriving.
pub struct Pending {
    pub id: u64,
    pub fd: OwnedFd,
    pub listener: usize,
    pub peer: Option<SocketAddr>,
    pub source: Source,
    pub deadline: std::time::Instant,
    /// Header bytes consumed so far (all of it is header: only complete prefixes are read).
    pub(super) got: Vec<u8>,
}

/// What became of a pending connection after its socket was readable.
pub enum Progress {
    Waiting,
    Done(Option<SocketAddr>),
    Failed(&'static str),
}

impl Pending {
    pub fn new(
        id: u64,
        fd: OwnedFd,
        listener: usize,
        peer: Option<SocketAddr>,
        deadline: std::time::Instant,
    ) -> Self {
        Pending {
            id,
            fd,
            listener,
            peer,
            source: source_of(peer),
            deadline,
            got: Vec::new(),
        }
    }

    /// Peeks at what arrived, consumes exactly the header bytes (never the data after them).
    pub fn advance(&mut self) -> Progress {
        use crate::proxy::{PEEK_MAX, Parsed, parse};
        let mut buf = [0u8; PEEK_MAX];
        let room = PEEK_MAX - self.got.len();
        let n = match socket::recv(
            self.fd.as_raw_fd(),
            &mut buf[..room],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Progress::Failed("closed before a PROXY header"),
            Ok(n) => n,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Progress::Waiting,
            Err(_) => return Progress::Failed("connection error before a PROXY header"),
        };
        let mut seen = self.got.clone();
        seen.extend_from_slice(&buf[..n]);
        let take = match parse(&seen) {
            Parsed::Invalid(why) => return Progress::Failed(why),
            Parsed::Incomplete if seen.len() >= PEEK_MAX => {
                return Progress::Failed("PROXY header too long");
            }
            Parsed::Incomplete => n,
            Parsed::Header { len, .. } => len - self.got.len(),
        };
        match socket::recv(
            self.fd.as_raw_fd(),
            &mut buf[..take],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(k) if k == take => {}
            _ => return Progress::Failed("connection error while reading the PROXY header"),
        }
        self.got.extend_from_slice(&buf[..take]);
        match parse(&self.got) {
            Parsed::Header { client, .. } => Progress::Done(client.or(self.peer)),
            _ => Progress::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let src = |s: &str| source_of(Some(s.parse().unwrap()));
        assert_eq!(src("192.0.2.7:80"), src("192.0.2.7:9999"));
        assert_ne!(src("192.0.2.7:80"), src("192.0.2.8:80"));
        assert_eq!(
            src("[2001:db8:1:2:aa::1]:80"),
            src("[2001:db8:1:2:bb::9]:80")
        );
        assert_ne!(src("[2001:db8:1:2::1]:80"), src("[2001:db8:1:3::1]:80"));
        assert_eq!(src("[::ffff:192.0.2.7]:80"), src("192.0.2.7:1"));
        assert_eq!(source_of(None), None);
    }
}
