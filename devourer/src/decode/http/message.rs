//! HTTP/1 request and response heads from the first bytes of a TCP segment, parsed with
//! httparse: pipelined messages in one segment one after another, a head cut by the segment's
//! end or the capture cap parsed as far as it goes with the cut fields marked.

/// Longest target kept; longer ones are cut and end with [`CUT_MARK`].
pub const MAX_TARGET: usize = 1024;
/// Longest header value kept.
const MAX_VALUE: usize = 512;
/// Longest method kept (standard methods are at most 7 bytes; extension ones a few more).
const MAX_METHOD: usize = 32;
/// Ends a field cut short (by the cap, the segment, or the length limits above).
pub const CUT_MARK: &str = "[...]";
/// Headers looked at per message (httparse needs a fixed array).
const MAX_HEADERS: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: Option<String>,
    pub version: Option<String>,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    /// Fields cut short (names as in the record).
    pub truncated: Vec<&'static str>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub version: String,
    pub status_code: u16,
    pub reason: Option<String>,
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    pub truncated: Vec<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

pub use crate::base::text::escape;

/// `bytes` escaped and cut to `max` bytes (with the mark), and whether it was cut.
fn field(bytes: &[u8], max: usize) -> (String, bool) {
    if bytes.len() > max {
        (format!("{}{CUT_MARK}", escape(&bytes[..max])), true)
    } else {
        (escape(bytes), false)
    }
}

fn version(minor: Option<u8>) -> Option<String> {
    minor.map(|m| format!("HTTP/1.{m}"))
}

/// The messages a segment's payload starts with. `Err` names why the first message did not
/// parse (the segment is not HTTP, or not the start of a message).
pub fn parse_segment(payload: &[u8]) -> Result<Vec<Message>, &'static str> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let buf = &payload[off..];
        let parsed = if buf.starts_with(b"HTTP/") {
            response(buf)
        } else {
            request(buf)
        };
        match parsed {
            Ok((m, Some(head))) => {
                // Skip a body of known length to reach a pipelined message behind it.
                let body = match &m {
                    Message::Request(_) => header_u64(&buf[..head], "content-length"),
                    Message::Response(r) => r.content_length,
                };
                out.push(m);
                match body {
                    Some(n) => off = off.saturating_add(head).saturating_add(n as usize),
                    None if chunked_or_unknown(&buf[..head]) => break,
                    None => off += head,
                }
            }
            Ok((m, None)) => {
                out.push(m);
                break;
            }
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// A chunked body or one that lasts until the connection closes: nothing can follow it here.
fn chunked_or_unknown(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    if r.parse(head).is_ok() {
        // A response without Content-Length reads to the end of the connection (or is chunked).
        return true;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut q = httparse::Request::new(&mut headers);
    let _ = q.parse(head);
    q.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"chunked")
    })
}

fn header_u64(head: &[u8], name: &str) -> Option<u64> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut q = httparse::Request::new(&mut headers);
    q.parse(head).ok()?;
    q.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
}

/// The head cut at its last complete line and closed with an empty line, so httparse reads
/// every header that arrived whole; and the cut line that follows, if any.
fn closed_prefix(buf: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let last = buf.iter().rposition(|&b| b == b'\n')?;
    let mut head = buf[..=last].to_vec();
    head.extend_from_slice(b"\r\n");
    Some((head, &buf[last + 1..]))
}

/// A header line cut short: its name and the value so far, if it has a colon.
fn cut_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let value = &line[colon + 1..];
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    Some((&line[..colon], &value[start..]))
}

/// One request; `Ok((m, Some(n)))` when its head ended after `n` bytes, `None` when cut.
fn request(buf: &[u8]) -> Result<(Message, Option<usize>), &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let (method, method_cut) = field(r.method.unwrap_or_default().as_bytes(), MAX_METHOD);
            let mut m = Request {
                method,
                ..Request::default()
            };
            if method_cut {
                m.truncated.push("method");
            }
            let (target, cut) = field(r.path.unwrap_or_default().as_bytes(), MAX_TARGET);
            m.target = Some(target);
            if cut {
                m.truncated.push("target");
            }
            m.version = version(r.version);
            request_headers(&mut m, r.headers);
            Ok((Message::Request(m), Some(n)))
        }
        Ok(httparse::Status::Partial) => {
            let method = r.method.ok_or("partial method")?.to_owned();
            let (kept, method_cut) = field(method.as_bytes(), MAX_METHOD);
            let mut m = Request {
                method: kept,
                ..Request::default()
            };
            if method_cut {
                m.truncated.push("method");
            }
            match (r.path, r.version) {
                (Some(path), Some(v)) => {
                    // The request line arrived whole; the headers did not.
                    let (target, cut) = field(path.as_bytes(), MAX_TARGET);
                    m.target = Some(target);
                    if cut {
                        m.truncated.push("target");
                    }
                    m.version = version(Some(v));
                    let (head, rest) = closed_prefix(buf).ok_or("no line end")?;
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut whole = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(_)) = whole.parse(&head) {
                        request_headers(&mut m, whole.headers);
                    }
                    if let Some((name, value)) = cut_header(rest) {
                        let (v, _) = field(value, MAX_VALUE);
                        let cut = format!("{v}{CUT_MARK}");
                        if name.eq_ignore_ascii_case(b"host") {
                            m.host = Some(cut);
                            m.truncated.push("host");
                        } else if name.eq_ignore_ascii_case(b"user-agent") {
                            m.user_agent = Some(cut);
                            m.truncated.push("user_agent");
                        }
                    }
                    m.truncated.push("headers");
                }
                (Some(path), None) => {
                    m.target = Some(field(path.as_bytes(), MAX_TARGET).0);
                    m.truncated.extend(["version", "headers"]);
                }
                (None, _) => {
                    // The request line itself is cut: the target runs to the end of the data.
                    let rest = &buf[method.len()..];
                    let rest = rest.strip_prefix(b" ").ok_or("no target")?;
                    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                    let (t, _) = field(&rest[..end], MAX_TARGET);
                    m.target = Some(format!("{t}{CUT_MARK}"));
                    m.truncated.extend(["target", "version", "headers"]);
                }
            }
            Ok((Message::Request(m), None))
        }
        // A broken header: keep the request line, mark the headers.
        Err(e) if header_error(e) => {
            let first = first_line(buf).ok_or(reason(e))?.0;
            let mut no_headers = [httparse::EMPTY_HEADER; 0];
            let mut line = httparse::Request::new(&mut no_headers);
            if !matches!(line.parse(&first), Ok(httparse::Status::Complete(_))) {
                return Err(reason(e));
            }
            let (target, cut) = field(line.path.unwrap_or_default().as_bytes(), MAX_TARGET);
            let (method, method_cut) =
                field(line.method.unwrap_or_default().as_bytes(), MAX_METHOD);
            let mut m = Request {
                method,
                target: Some(target),
                version: version(line.version),
                truncated: vec!["headers"],
                ..Request::default()
            };
            if cut {
                m.truncated.insert(0, "target");
            }
            if method_cut {
                m.truncated.insert(0, "method");
            }
            Ok((Message::Request(m), None))
        }
        Err(e) => Err(reason(e)),
    }
}

/// httparse's complaints about a header after a whole first line.
fn header_error(e: httparse::Error) -> bool {
    matches!(
        e,
        httparse::Error::HeaderName
            | httparse::Error::HeaderValue
            | httparse::Error::TooManyHeaders
    )
}

/// The first line of `buf` closed as a head without headers, and what follows it.
fn first_line(buf: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let mut head = buf[..=end].to_vec();
    head.extend_from_slice(b"\r\n");
    Some((head, &buf[end + 1..]))
}

fn request_headers(m: &mut Request, headers: &[httparse::Header<'_>]) {
    for h in headers {
        if h.name.eq_ignore_ascii_case("host") && m.host.is_none() {
            let (v, cut) = field(h.value, MAX_VALUE);
            m.host = Some(v);
            if cut {
                m.truncated.push("host");
            }
        } else if h.name.eq_ignore_ascii_case("user-agent") && m.user_agent.is_none() {
            let (v, cut) = field(h.value, MAX_VALUE);
            m.user_agent = Some(v);
            if cut {
                m.truncated.push("user_agent");
            }
        }
    }
}

/// One response; as [`request`].
fn response(buf: &[u8]) -> Result<(Message, Option<usize>), &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut m = Response {
                version: version(r.version).unwrap_or_default(),
                status_code: r.code.unwrap_or_default(),
                reason: r.reason.map(|s| field(s.as_bytes(), MAX_VALUE).0),
                ..Response::default()
            };
            response_headers(&mut m, r.headers);
            Ok((Message::Response(m), Some(n)))
        }
        Ok(httparse::Status::Partial) => {
            let (Some(v), Some(code)) = (r.version, r.code) else {
                return Err("partial status line");
            };
            let mut m = Response {
                version: format!("HTTP/1.{v}"),
                status_code: code,
                ..Response::default()
            };
            match r.reason {
                Some(reason) => {
                    m.reason = Some(field(reason.as_bytes(), MAX_VALUE).0);
                    let (head, rest) = closed_prefix(buf).ok_or("no line end")?;
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut whole = httparse::Response::new(&mut headers);
                    if let Ok(httparse::Status::Complete(_)) = whole.parse(&head) {
                        response_headers(&mut m, whole.headers);
                    }
                    if let Some((name, value)) = cut_header(rest)
                        && name.eq_ignore_ascii_case(b"content-type")
                    {
                        m.content_type = Some(format!("{}{CUT_MARK}", field(value, MAX_VALUE).0));
                        m.truncated.push("content_type");
                    }
                }
                None => m.truncated.push("reason"),
            }
            m.truncated.push("headers");
            Ok((Message::Response(m), None))
        }
        // A broken header: keep the status line, mark the headers.
        Err(e) if header_error(e) => {
            let first = first_line(buf).ok_or(reason(e))?.0;
            let mut no_headers = [httparse::EMPTY_HEADER; 0];
            let mut line = httparse::Response::new(&mut no_headers);
            match line.parse(&first) {
                Ok(httparse::Status::Complete(_)) => Ok((
                    Message::Response(Response {
                        version: version(line.version).unwrap_or_default(),
                        status_code: line.code.unwrap_or_default(),
                        reason: line.reason.map(|s| field(s.as_bytes(), MAX_VALUE).0),
                        truncated: vec!["headers"],
                        ..Response::default()
                    }),
                    None,
                )),
                _ => Err(reason(e)),
            }
        }
        Err(e) => Err(reason(e)),
    }
}

fn response_headers(m: &mut Response, headers: &[httparse::Header<'_>]) {
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") && m.content_length.is_none() {
            m.content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("content-type") && m.content_type.is_none() {
            let (v, cut) = field(h.value, MAX_VALUE);
            m.content_type = Some(v);
            if cut {
                m.truncated.push("content_type");
            }
        }
    }
}

fn reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::NewLine => "bad line end",
        httparse::Error::Status => "bad status",
        httparse::Error::Token => "bad method",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "bad version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(payload: &[u8]) -> Message {
        let mut v = parse_segment(payload).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    #[test]
    fn a_whole_request_gives_its_line_host_and_agent() {
        let Message::Request(r) = one(
            b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        ) else {
            panic!("a request")
        };
        assert_eq!(r.method, "GET");
        assert_eq!(r.target.as_deref(), Some("/a?b=1"));
        assert_eq!(r.version.as_deref(), Some("HTTP/1.1"));
        assert_eq!(r.host.as_deref(), Some("example.test"));
        assert_eq!(r.user_agent.as_deref(), Some("curl/8.5.0"));
        assert!(r.truncated.is_empty());
    }

    #[test]
    fn a_whole_response_gives_status_length_and_type() {
        let Message::Response(r) = one(
            b"HTTP/1.0 404 File not found\r\nContent-Type: text/html;charset=utf-8\r\nContent-Length: 335\r\n\r\n<html>",
        ) else {
            panic!("a response")
        };
        assert_eq!(
            (r.version.as_str(), r.status_code, r.reason.as_deref()),
            ("HTTP/1.0", 404, Some("File not found"))
        );
        assert_eq!(r.content_length, Some(335));
        assert_eq!(r.content_type.as_deref(), Some("text/html;charset=utf-8"));
    }

    #[test]
    fn pipelined_requests_in_one_segment_are_all_read() {
        let v = parse_segment(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcHEAD /3 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
        let targets: Vec<_> = v
            .iter()
            .map(|m| match m {
                Message::Request(r) => (r.method.clone(), r.target.clone().unwrap()),
                Message::Response(_) => panic!("requests only"),
            })
            .collect();
        assert_eq!(
            targets,
            [
                ("GET".into(), "/1".into()),
                ("POST".into(), "/2".into()),
                ("HEAD".into(), "/3".into())
            ]
        );
    }

    #[test]
    fn a_head_cut_in_a_header_keeps_what_arrived_and_marks_the_cut() {
        let Message::Request(r) =
            one(b"GET /x HTTP/1.1\r\nHost: example.test\r\nUser-Agent: Mozil")
        else {
            panic!("a request")
        };
        assert_eq!(r.target.as_deref(), Some("/x"));
        assert_eq!(r.host.as_deref(), Some("example.test"));
        assert_eq!(r.user_agent.as_deref(), Some("Mozil[...]"));
        assert!(r.truncated.contains(&"user_agent"));
        assert!(r.truncated.contains(&"headers"));
    }

    #[test]
    fn a_request_line_cut_keeps_method_and_the_start_of_the_target() {
        let Message::Request(r) = one(b"GET /very/long/pa") else {
            panic!("a request")
        };
        assert_eq!(r.method, "GET");
        assert_eq!(r.target.as_deref(), Some("/very/long/pa[...]"));
        assert_eq!(r.version, None);
        assert!(r.truncated.contains(&"target"));
    }

    #[test]
    fn long_targets_are_cut_with_a_marker() {
        let mut req = b"GET /".to_vec();
        req.extend(std::iter::repeat_n(b'a', 3000));
        req.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let Message::Request(r) = one(&req) else {
            panic!("a request")
        };
        let t = r.target.unwrap();
        assert_eq!(t.len(), MAX_TARGET + CUT_MARK.len());
        assert!(t.ends_with(CUT_MARK));
        assert_eq!(r.truncated, ["target"]);
    }

    #[test]
    fn wire_bytes_cannot_forge_a_line() {
        let Message::Request(r) =
            one(b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: a\xff\\b\r\n\r\n")
        else {
            panic!("a request")
        };
        assert_eq!(r.user_agent.as_deref(), Some("a\\255\\\\b"));
        assert_eq!(escape(b"a\nb\rc\x1b"), "a\\010b\\013c\\027");
    }

    #[test]
    fn a_broken_header_keeps_the_request_line() {
        let Message::Request(r) = one(b"GET /a HTTP/1.1\r\nUser-Agent: a\x1b[31m\r\n\r\n") else {
            panic!("a request")
        };
        assert_eq!(
            (r.method.as_str(), r.target.as_deref()),
            ("GET", Some("/a"))
        );
        assert_eq!(r.user_agent, None);
        assert_eq!(r.truncated, ["headers"]);
    }

    #[test]
    fn binary_and_body_bytes_are_not_http() {
        assert!(parse_segment(b"\x16\x03\x01\x02\x00\x01").is_err());
        assert!(parse_segment(b"\0\0\0\0garbage").is_err());
        assert!(parse_segment(b"GE\x01 / HTTP/1.1\r\n\r\n").is_err());
    }
}
