//! The guard's protocol: frames of `tag u8 | length u32 LE | payload` over a Unix stream
//! socketpair, both ends in this file. The guard is forked, not exec'ed, and lives as long as
//! the service: after an in-place upgrade (see `upgrade/`) a newer supervisor talks to the
//! guard an older binary forked. So the frames below are an interface between versions: a
//! newer multinode sends only these (with these payloads), and a new kind of frame needs a
//! new state format, so that an image whose guard would not know it is refused the state.
//!
//! | supervisor → guard | payload | when |
//! |---|---|---|
//! | `T` track, `U` untrack | a worker's process group id, i32 LE | any time |
//! | `F` socket file, `D` directory, `G` cgroup | a path | until `S` |
//! | `S` sealed | – | once, just before the privilege drop |
//! | `R` read the config file | – | any time; answered by `C` or `E` |
//! | `X` exit | – | at the end: clean up now and exit |
//!
//! | guard → supervisor | payload |
//! |---|---|
//! | `C` the config file's bytes | at most [`MAX_CONFIG`] |
//! | `E` it could not be read | the reason, text |

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The largest request payload (a path).
pub const MAX_REQUEST: usize = 4096;
/// The largest config file the guard reads for a reload.
pub const MAX_CONFIG: usize = 1 << 20;
const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Track(i32),
    Untrack(i32),
    SocketFile(PathBuf),
    Dir(PathBuf),
    Cgroup(PathBuf),
    Seal,
    ReadConfig,
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Config(Vec<u8>),
    ConfigError(String),
}

fn frame(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

impl Request {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let path = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let (tag, payload) = match self {
            Request::Track(g) => (b'T', g.to_le_bytes().to_vec()),
            Request::Untrack(g) => (b'U', g.to_le_bytes().to_vec()),
            Request::SocketFile(p) => (b'F', path(p)),
            Request::Dir(p) => (b'D', path(p)),
            Request::Cgroup(p) => (b'G', path(p)),
            Request::Seal => (b'S', Vec::new()),
            Request::ReadConfig => (b'R', Vec::new()),
            Request::Exit => (b'X', Vec::new()),
        };
        frame(out, tag, &payload);
    }

    pub fn decode(tag: u8, p: &[u8]) -> Result<Request, String> {
        let pgid = || {
            <[u8; 4]>::try_from(p)
                .map(i32::from_le_bytes)
                .map_err(|_| "a process group id is 4 bytes".to_string())
        };
        let path = || {
            if p.first() == Some(&b'/') && !p.contains(&0) {
                Ok(PathBuf::from(OsStr::from_bytes(p)))
            } else {
                Err("a path must be absolute, without NUL".to_string())
            }
        };
        let empty = |r: Request| {
            if p.is_empty() {
                Ok(r)
            } else {
                Err(format!("request {} takes no payload", tag as char))
            }
        };
        match tag {
            b'T' => pgid().map(Request::Track),
            b'U' => pgid().map(Request::Untrack),
            b'F' => path().map(Request::SocketFile),
            b'D' => path().map(Request::Dir),
            b'G' => path().map(Request::Cgroup),
            b'S' => empty(Request::Seal),
            b'R' => empty(Request::ReadConfig),
            b'X' => empty(Request::Exit),
            _ => Err(format!("unknown request tag {tag}")),
        }
    }
}

impl Reply {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Config(bytes) => frame(out, b'C', bytes),
            Reply::ConfigError(why) => frame(out, b'E', why.as_bytes()),
        }
    }

    pub fn decode(tag: u8, p: &[u8]) -> Result<Reply, String> {
        match tag {
            b'C' => Ok(Reply::Config(p.to_vec())),
            b'E' => Ok(Reply::ConfigError(String::from_utf8_lossy(p).into_owned())),
            _ => Err(format!("unknown reply tag {tag}")),
        }
    }
}

/// Splits a byte stream into frames, none larger than `max`.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            max,
        }
    }

    /// The bytes read and not yet a whole frame (an upgrade hands them over).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame (tag, payload); `Ok(None)` until its bytes are all in. A frame
    /// announced larger than the maximum is an error: the stream cannot be trusted after it.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, String> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(format!("a frame of {len} bytes (at most {})", self.max));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let tag = self.buf[0];
        let payload = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some((tag, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_a_stream_cut_anywhere() {
        let all = vec![
            Request::Track(42),
            Request::Untrack(-1),
            Request::SocketFile("/run/multinode/a/control.sock".into()),
            Request::Dir("/run/multinode/a".into()),
            Request::Cgroup("/sys/fs/cgroup/multinode-a.1".into()),
            Request::Seal,
            Request::ReadConfig,
            Request::Exit,
        ];
        let mut bytes = Vec::new();
        for r in &all {
            r.encode(&mut bytes);
        }
        for cut in [1, 3, 5, 7, 64] {
            let mut d = Decoder::new(MAX_REQUEST);
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.push(chunk);
                while let Some((tag, p)) = d.next_frame().unwrap() {
                    got.push(Request::decode(tag, &p).unwrap());
                }
            }
            assert_eq!(got, all, "cut {cut}");
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Config(b"workers = 2\n".to_vec()),
            Reply::ConfigError("permission denied".into()),
        ] {
            let mut bytes = Vec::new();
            r.encode(&mut bytes);
            let mut d = Decoder::new(MAX_CONFIG);
            d.push(&bytes);
            let (tag, p) = d.next_frame().unwrap().unwrap();
            assert_eq!(Reply::decode(tag, &p).unwrap(), r);
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut d = Decoder::new(MAX_REQUEST);
        d.push(&[b'F', 0xff, 0xff, 0xff, 0x7f]);
        assert!(d.next_frame().is_err(), "an oversized frame");
        assert!(Request::decode(b'F', b"relative/path").is_err());
        assert!(Request::decode(b'F', b"/a\0b").is_err());
        assert!(Request::decode(b'T', b"123").is_err());
        assert!(Request::decode(b'S', b"x").is_err());
        assert!(Request::decode(b'?', b"").is_err());
        assert!(Reply::decode(b'?', b"").is_err());
    }
}
