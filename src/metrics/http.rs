//! The HTTP/1.x of `--metrics`: where a request head ends as its bytes arrive, what the
//! request line asks for (`GET|HEAD /metrics|/healthz`), and the bytes of a response. Pure
//! functions over bytes; the connections are `mod.rs`'s. Clients are anyone who can reach the
//! address, so this is fuzzed (`fuzz/`, target `metrics_http`).

/// The longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Metrics,
    Healthz,
}

/// A request the shell must answer (with `MetricsServer::respond`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub page: Page,
    /// `HEAD`: the headers only.
    pub head_only: bool,
}

/// An answer: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A short plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Where the head ends in `buf` (just past its blank line), when the first `before` bytes
/// of it were searched already and held no end: only the bytes that arrived since, and the
/// 3 before them (a blank line may straddle two reads), are searched again.
pub fn head_end_after(buf: &[u8], before: usize) -> Option<usize> {
    head_end(buf, before.saturating_sub(3))
}

/// Where the head in `buf` ends (after its blank line: CRLF CRLF, or LF LF from a lax
/// client), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = &buf[from..];
    let crlf = tail
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = tail.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    [crlf, lf].into_iter().flatten().min().map(|i| from + i)
}

/// The request line of a head: `GET|HEAD /metrics|/healthz HTTP/1.x` (a query string is
/// ignored), or the response that refuses it.
pub fn parse(head: &[u8]) -> std::result::Result<Request, Response> {
    let bad = || Response::text(400, "bad request\n");
    let line = head.split(|&b| b == b'\n').next().ok_or_else(bad)?;
    let line = std::str::from_utf8(line).map_err(|_| bad())?.trim_end();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let path = target.split('?').next().unwrap_or_default();
    let page = match path {
        "/metrics" => Page::Metrics,
        "/healthz" => Page::Healthz,
        _ => return Err(Response::text(404, "not found: try /metrics or /healthz\n")),
    };
    match method {
        "GET" => Ok(Request {
            page,
            head_only: false,
        }),
        "HEAD" => Ok(Request {
            page,
            head_only: true,
        }),
        _ => Err(Response::text(405, "method not allowed: use GET\n")),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

pub fn encode_response(r: &Response, head_only: bool) -> Vec<u8> {
    let allow = if r.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(head: &str) -> u16 {
        match parse(head.as_bytes()) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn requests() {
        let get = |p| parse(format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(
            get("/metrics").ok(),
            Some(Request {
                page: Page::Metrics,
                head_only: false
            })
        );
        assert_eq!(
            get("/healthz?verbose").ok().map(|r| r.page),
            Some(Page::Healthz)
        );
        assert_eq!(
            parse(b"HEAD /healthz HTTP/1.0\r\n\r\n").ok(),
            Some(Request {
                page: Page::Healthz,
                head_only: true
            })
        );
        assert_eq!(status_of("GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status_of("GET /metricsx HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status_of("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status_of("GET /metrics\r\n\r\n"), 400);
        assert_eq!(status_of("GET /metrics SPDY/3\r\n\r\n"), 400);
        assert_eq!(status_of("\u{1}\r\n\r\n"), 400);
    }

    #[test]
    fn heads_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        // A blank line that straddles two reads is found when the second arrives.
        let head = b"GET / HTTP/1.1\r\nA: b\r\n\r\n";
        for before in 0..head.len() {
            assert_eq!(head_end_after(head, before), Some(head.len()), "{before}");
        }
    }

    #[test]
    fn responses() {
        let r = encode_response(&Response::text(503, "stopping\n"), false);
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 9\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nstopping\n"));
        let head = String::from_utf8(encode_response(&Response::text(200, "ok\n"), true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3\r\n"));
        let r405 = String::from_utf8(encode_response(&Response::text(405, ""), false)).unwrap();
        assert!(r405.contains("Allow: GET, HEAD\r\n"));
    }
}
