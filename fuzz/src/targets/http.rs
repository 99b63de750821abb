//! `http`: the example workers' HTTP/1.x (`examples/http`, the mini-http crate that `hello`,
//! `affinity` and the test workers share), which reads whatever a client sends. The benches
//! run `hello`, and the examples are what users copy.
//!
//! The input is one connection's bytes, read in chunks of a size the first byte picks, and
//! served the way `hello` serves it: read a head, parse it, drop its body (Content-Length or
//! chunked), next request; a bad request ends the connection. A head is at most `MAX_HEAD`
//! bytes, and is at the front of what is buffered; every request read consumes bytes (so a
//! connection ends); a request is answered by one of the statuses the workers send.

use std::io::Read;

use mini_http::{Input, MAX_HEAD, parse_head, reason};

/// A connection that delivers `data` `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(self.chunk).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

pub fn check(data: &[u8]) {
    let Some((&cut, sent)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut) * 64 + 1;
    let mut input = Input::new(Chunked { data: sent, chunk });
    let left = |input: &Input<Chunked>| input.get_ref().data.len() + input.buffered().len();
    loop {
        let before = left(&input);
        let head_len = match input.read_head() {
            Ok(Some(n)) => n,
            // 431, or the connection ended.
            Ok(None) | Err(_) => return,
        };
        assert!(head_len <= MAX_HEAD && head_len <= input.buffered().len());
        let head = input.buffered()[..head_len].to_vec();
        // An empty line ends it, after a line that ended in LF or CRLF (RFC 9112 lets a
        // recipient take a bare LF as a line's end): LF LF, LF CR LF, CR LF CR LF.
        assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"));
        let req = match parse_head(&head) {
            Ok(req) => req,
            Err((status, why)) => {
                assert!(matches!(status, 400 | 501 | 505), "{status} {why}");
                assert_ne!(reason(status), "Error");
                return;
            }
        };
        assert!(!req.method.is_empty() && !req.target.is_empty());
        assert!(req.minor <= 1);
        input.consume(head_len);
        let body = if req.chunked {
            match input.discard_chunked() {
                Ok(Ok(())) => true,
                Ok(Err(_)) | Err(_) => false,
            }
        } else {
            input.discard(req.content_length.unwrap_or(0)).is_ok()
        };
        if !body || req.close {
            return;
        }
        assert!(left(&input) < before, "a request consumed nothing");
    }
}
