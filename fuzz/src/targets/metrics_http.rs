//! `metrics_http`: the request heads of `--metrics` (`src/metrics/http.rs`), from anyone who
//! can reach its address.
//!
//! The input is what a client sends, read in chunks of a size the first byte picks. The end
//! of the head found as the chunks arrive (`head_end_after`, as `mod.rs` reads) is the one
//! found in all of it at once; the request line is then either a page (`/metrics`,
//! `/healthz`, by GET or HEAD) or an error response (400, 404, 405) whose bytes are a
//! complete HTTP/1.1 response with a Content-Length that is its body's.

use crate::metrics_http::{MAX_HEAD, Page, encode_response, head_end_after, parse};

pub fn check(data: &[u8]) {
    let Some((&cut, sent)) = data.split_first() else {
        return;
    };
    let sent = &sent[..sent.len().min(MAX_HEAD + 4)];
    let at_once = head_end_after(sent, 0);
    let chunk = usize::from(cut) + 1;
    let mut have = 0;
    let mut found = None;
    while have < sent.len() && found.is_none() {
        let before = have;
        have = (have + chunk).min(sent.len());
        found = head_end_after(&sent[..have], before);
    }
    assert_eq!(found, at_once, "in chunks of {chunk}");
    let head = match at_once {
        Some(end) => {
            assert!(
                end <= sent.len()
                    && (sent[..end].ends_with(b"\n\n") || sent[..end].ends_with(b"\r\n\r\n"))
            );
            &sent[..end]
        }
        None => sent,
    };
    match parse(head) {
        Ok(req) => {
            let line = head.split(|&b| b == b'\n').next().expect("a line");
            let method = if req.head_only {
                &b"HEAD "[..]
            } else {
                b"GET "
            };
            assert!(line.starts_with(method), "{}", line.escape_ascii());
            let path = match req.page {
                Page::Metrics => &b"/metrics"[..],
                Page::Healthz => b"/healthz",
            };
            assert!(line[method.len()..].starts_with(path));
        }
        Err(resp) => {
            assert!(matches!(resp.status, 400 | 404 | 405), "{}", resp.status);
            for head_only in [false, true] {
                response(
                    &encode_response(&resp, head_only),
                    resp.status,
                    &resp.body,
                    head_only,
                );
            }
        }
    }
}

/// `bytes` is a whole response of `status`: status line, headers, blank line, the body (none
/// for HEAD) whose length Content-Length gives.
fn response(bytes: &[u8], status: u16, body: &str, head_only: bool) {
    let text = std::str::from_utf8(bytes).expect("text");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a blank line");
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{head}"
    );
    assert_eq!(rest, if head_only { "" } else { body });
}
