//! mini-http: the HTTP/1.x request parsing the example workers (`hello`, `affinity`) and the
//! test workers share, so that each of them shows only what it is an example of. std only.
//!
//! - [`Input`] wraps a connection (anything that is [`Read`]) and keeps what was read but not
//!   consumed yet: the rest of a head, a body, pipelined requests. [`Input::read_head`] reads
//!   until a whole request head is buffered; [`Input::discard`] and
//!   [`Input::discard_chunked`] drop a body.
//! - [`parse_head`] checks a head by RFC 9112 and returns the parts a server acts on
//!   ([`Request`]), or the status to answer a bad one with.
//!
//! Responses are each program's own business; [`reason`] gives the reason phrases.
//!
//! [`drain::Tracker`] keeps the open connections for a graceful drain after a stop.

use std::io::{self, Read};

pub mod drain;

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest chunk-size or trailer line of a chunked body.
pub const MAX_LINE: usize = 4096;

/// The parts of a request head a server acts on.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// HTTP/1.minor (1.2 and later count as 1.1).
    pub minor: u8,
    /// `Connection: close`
    pub close: bool,
    /// `Connection: keep-alive` (what HTTP/1.0 clients send to keep it)
    pub keep_alive: bool,
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` ending in `chunked`.
    pub chunked: bool,
    /// `Expect: 100-continue`
    pub expect_continue: bool,
}

impl Request {
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

/// Parses a request head (request line, header lines, blank line).
/// `Err((status, reason))` for requests that get an error response.
pub fn parse_head(head: &[u8]) -> Result<Request, (u16, &'static str)> {
    let text = std::str::from_utf8(head).map_err(|_| (400, "request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err((400, "malformed method"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err((400, "malformed request target"));
    }
    let minor = match version.strip_prefix("HTTP/1.") {
        Some(m) if m.len() == 1 && m.as_bytes()[0].is_ascii_digit() => {
            // 1.2 and later are answered as 1.1 (RFC 9110, 2.5).
            if m == "0" { 0 } else { 1 }
        }
        _ if version.starts_with("HTTP/") => return Err((505, "only HTTP/1.x is supported")),
        _ => return Err((400, "malformed HTTP version")),
    };
    let mut req = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        ..Request::default()
    };
    let mut transfer_encoding: Option<String> = None;
    for line in lines {
        if line.is_empty() {
            continue; // the blank line that ends the head
        }
        if line.starts_with([' ', '\t']) {
            return Err((400, "obsolete header line folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err((400, "header line without a colon"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err((400, "malformed header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                req.close |= token.eq_ignore_ascii_case("close");
                req.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // "5, 5" (a merged duplicate) is allowed, "5, 6" is not.
            for v in value.split(',').map(str::trim) {
                let n = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| v.parse::<u64>().ok())
                    .flatten()
                    .ok_or((400, "malformed Content-Length"))?;
                if req.content_length.is_some_and(|m| m != n) {
                    return Err((400, "conflicting Content-Length headers"));
                }
                req.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let all = transfer_encoding.get_or_insert_with(String::new);
            if !all.is_empty() {
                all.push(',');
            }
            all.push_str(value);
        } else if name.eq_ignore_ascii_case("expect") {
            req.expect_continue |= value.eq_ignore_ascii_case("100-continue");
        }
    }
    if let Some(te) = transfer_encoding {
        let last = te.rsplit(',').map(str::trim).find(|c| !c.is_empty());
        if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            // The body's length cannot be known (RFC 9112, 6.3).
            return Err((400, "Transfer-Encoding without final chunked"));
        }
        req.chunked = true;
    }
    Ok(req)
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The length of the head at the start of `buf`, blank line included:
/// up to the first empty line (CRLF CRLF, or with bare LFs as RFC 9112 allows: LF LF,
/// LF CRLF).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + i;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        from = nl + 1;
    }
    None
}

/// The reason phrase of the statuses the workers send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A connection and the bytes read from it but not consumed yet (the rest
/// of a head, a body, or pipelined requests).
pub struct Input<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: Read> Input<R> {
    pub fn new(reader: R) -> Self {
        Input {
            reader,
            buf: Vec::with_capacity(1024),
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// What was read and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads more into the buffer; false at end of file.
    pub fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0; 8192];
        loop {
            match self.reader.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops the first `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }

    /// Servers should ignore empty lines before a request line (RFC 9112, 2.2).
    pub fn skip_leading_blank_lines(&mut self) {
        let n = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        // Keep a lone trailing CR: it may be the start of a CRLF.
        let n = if n == self.buf.len() && self.buf.last() == Some(&b'\r') {
            n - 1
        } else {
            n
        };
        self.consume(n);
    }

    /// Reads until a whole request head is buffered (skipping blank lines before it):
    /// `Some(its length)`, or `None` when it is larger than [`MAX_HEAD`]. End of file before
    /// a whole head is an `UnexpectedEof` error.
    pub fn read_head(&mut self) -> io::Result<Option<usize>> {
        loop {
            self.skip_leading_blank_lines();
            match head_end(&self.buf) {
                Some(n) if n <= MAX_HEAD => return Ok(Some(n)),
                Some(_) => return Ok(None),
                None if self.buf.len() >= MAX_HEAD => return Ok(None),
                None => {
                    if !self.fill()? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
    }

    /// Reads and drops `n` body bytes.
    pub fn discard(&mut self, mut n: u64) -> io::Result<()> {
        let buffered = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        self.consume(buffered);
        n -= buffered as u64;
        let mut scratch = [0; 8192];
        while n > 0 {
            let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            match self.reader.read(&mut scratch[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(got) => n -= got as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One line (without its line end), at most [`MAX_LINE`] bytes.
    pub fn line(&mut self) -> io::Result<Result<String, &'static str>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[..i])
                    .trim_end_matches('\r')
                    .to_owned();
                self.consume(i + 1);
                return Ok(Ok(line));
            }
            if self.buf.len() > MAX_LINE {
                return Ok(Err("chunked body line too long"));
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads and drops a chunked body and its trailers.
    /// The inner `Err` is a malformed body (answered with 400).
    pub fn discard_chunked(&mut self) -> io::Result<Result<(), &'static str>> {
        loop {
            let line = match self.line()? {
                Ok(l) => l,
                Err(why) => return Ok(Err(why)),
            };
            let size = line.split(';').next().unwrap_or_default().trim();
            let Ok(size) = u64::from_str_radix(size, 16) else {
                return Ok(Err("malformed chunk size"));
            };
            if size == 0 {
                break;
            }
            self.discard(size)?;
            match self.line()? {
                Ok(l) if l.is_empty() => {}
                Ok(_) => return Ok(Err("chunk not followed by a line end")),
                Err(why) => return Ok(Err(why)),
            }
        }
        // Trailer fields, up to an empty line.
        let mut trailers = 0;
        loop {
            match self.line()? {
                Ok(l) if l.is_empty() => return Ok(Ok(())),
                Ok(_) if trailers < 100 => trailers += 1,
                Ok(_) => return Ok(Err("too many trailer fields")),
                Err(why) => return Ok(Err(why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn parses_requests() {
        let r = parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str(), r.minor),
            ("GET", "/a", 1)
        );
        assert!(r.close && r.keep_alive);
        let r = parse_head(b"POST / HTTP/1.0\r\nContent-Length: 5, 5\r\n\r\n").unwrap();
        assert_eq!((r.minor, r.content_length), (0, Some(5)));
        let r = parse_head(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert!(r.chunked && r.expect_continue && r.has_body());
        assert_eq!(parse_head(b"GET / HTTP/1.2\r\n\r\n").unwrap().minor, 1);
    }

    #[test]
    fn rejects_bad_requests() {
        for (head, status) in [
            (&b"GET /\r\n\r\n"[..], 400),
            (b"GET  / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / FTP/1.0\r\n\r\n", 400),
            (b"G(T / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        ] {
            assert_eq!(
                parse_head(head).map_err(|e| e.0),
                Err(status),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn reads_pipelined_requests_and_drops_their_bodies() {
        let wire: &[u8] = b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
            GET /c HTTP/1.1\r\n\r\n";
        let mut input = Input::new(wire);
        let mut targets = Vec::new();
        while let Ok(Some(n)) = input.read_head() {
            let req = parse_head(&input.buffered()[..n]).unwrap();
            input.consume(n);
            if req.chunked {
                input.discard_chunked().unwrap().unwrap();
            } else if let Some(n) = req.content_length {
                input.discard(n).unwrap();
            }
            targets.push(req.target);
        }
        assert_eq!(targets, ["/a", "/b", "/c"]);
        assert!(input.buffered().is_empty());
    }

    #[test]
    fn bounds_heads_and_chunk_lines() {
        let big = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(Input::new(&big[..]).read_head().unwrap(), None);
        let eof = Input::new(&b"GET / HTTP/1.1\r\n"[..]).read_head();
        assert_eq!(eof.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut bad = Input::new(&b"zz\r\n"[..]);
        assert_eq!(bad.discard_chunked().unwrap(), Err("malformed chunk size"));
    }
}
