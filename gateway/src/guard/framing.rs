//! Strict HTTP/1.1 request framing (RFC 9112), checked on the raw bytes
//! before pingora parses them.
//!
//! Why our own: request smuggling lives in the gap between two parsers'
//! leniencies (a bare LF one accepts, a `Transfer-Encoding` the other
//! ignores). pingora and httparse accept bare LF line endings, percent-escape
//! spaces in the target, and keep going after `Content-Length` *and*
//! `Transfer-Encoding`. Here everything outside the RFC's grammar is refused,
//! so pingora and every backend behind it only ever see messages whose
//! framing has one reading. The checks are linear scans over bytes that are
//! in cache anyway.

/// Why a request is refused, with the status it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Size limits of a request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Longest request target (414).
    pub max_target: usize,
    /// Longest head, request line and fields (431).
    pub max_head: usize,
    /// Most header fields (431).
    pub max_fields: usize,
}

/// How the body of a checked request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head that passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub framing: Framing,
    /// HTTP/1.1 with `Upgrade`: after it, the connection may carry another
    /// protocol (pingora's reading, `is_upgrade_req`).
    pub upgrade: bool,
}

/// Where a head ends in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// More bytes needed.
    Incomplete,
    /// The head is `buf[start..end]` (`end` just past the blank line);
    /// `start` skips empty lines before the request line (RFC 9112 §2.2).
    Complete {
        start: usize,
        end: usize,
    },
    Refused(Refusal),
}

/// Most empty lines tolerated before a request line.
const MAX_LEADING_EMPTY_LINES: usize = 2;

/// Finds the end of the request head at the start of `buf`, refusing bare
/// CR and bare LF as soon as they are seen.
pub fn scan_head(buf: &[u8], limits: &HeadLimits) -> Scan {
    let mut start = 0;
    for _ in 0..MAX_LEADING_EMPTY_LINES {
        match &buf[start..] {
            [b'\r', b'\n', ..] => start += 2,
            [b'\r'] | [] => return Scan::Incomplete,
            _ => break,
        }
    }
    let head = &buf[start..];
    let mut line_start = 0;
    // Jump from line end to line end (memchr is SIMD). A CR inside a line
    // is refused by `check_head`'s character checks.
    for i in memchr::memchr_iter(b'\n', head) {
        // Every LF must be the second half of a CRLF.
        if i == 0 || head[i - 1] != b'\r' {
            return Scan::Refused(refuse(400, "a bare LF in the request head"));
        }
        if i == line_start + 1 && line_start > 0 {
            return Scan::Complete {
                start,
                end: start + i + 1,
            };
        }
        if line_start == 0 && i > limits.max_target + REQUEST_LINE_SLACK {
            return Scan::Refused(refuse(414, "request target too long"));
        }
        line_start = i + 1;
    }
    if line_start == 0 && head.len() > limits.max_target + REQUEST_LINE_SLACK {
        return Scan::Refused(refuse(414, "request target too long"));
    }
    if head.len() > limits.max_head {
        return Scan::Refused(refuse(431, "request head too large"));
    }
    Scan::Incomplete
}

/// Room for the method and version beside the longest target.
const REQUEST_LINE_SLACK: usize = 64;
/// Longest method (the registered ones are under 20 bytes).
const MAX_METHOD: usize = 32;

/// `tchar` (RFC 9110 §5.6.2), as a table: one load per byte.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

fn is_token(bytes: &[u8]) -> bool {
    let bad = bytes
        .iter()
        .fold(0u8, |acc, &b| acc | u8::from(!TCHAR[usize::from(b)]));
    !bytes.is_empty() && bad == 0
}

/// `field-vchar` / SP / HTAB: no control characters, DEL included.
fn is_field_value(bytes: &[u8]) -> bool {
    // An OR over the whole value without early exit, which the compiler
    // turns into vector instructions (a head is checked on every request).
    let bad = bytes.iter().fold(0u8, |acc, &b| {
        acc | u8::from(((b < 0x20) & (b != b'\t')) | (b == 0x7f))
    });
    bad == 0
}

/// A request target: visible ASCII only, no `#` (vectorisable, as above).
fn is_target(bytes: &[u8]) -> bool {
    let bad = bytes.iter().fold(0u8, |acc, &b| {
        acc | u8::from(!(0x21..=0x7e).contains(&b) | (b == b'#'))
    });
    bad == 0
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// `Host`: `uri-host [ ":" port ]`, no userinfo, no path.
fn is_host(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// Checks a complete head (`scan_head`'s `buf[start..end]`).
pub fn check_head(head: &[u8], limits: &HeadLimits) -> Result<Head, Refusal> {
    if head.len() > limits.max_head {
        return Err(refuse(431, "request head too large"));
    }
    // Lines end in CRLF: a line without its CR had a bare LF; a CR inside
    // a line fails the character checks below (CR is a control).
    let Some(body) = head.strip_suffix(b"\r\n\r\n") else {
        return Err(refuse(400, "a request head must end with an empty line"));
    };
    let mut line_start = 0;
    let mut lines = memchr::memchr_iter(b'\n', body)
        .map(Some)
        .chain(std::iter::once(None))
        .map(|newline| {
            let line = match newline {
                Some(end) => {
                    let line = &body[line_start..end];
                    line_start = end + 1;
                    line.strip_suffix(b"\r")
                        .ok_or(refuse(400, "a bare LF in the request head"))?
                }
                None => body.get(line_start..).unwrap_or_default(),
            };
            Ok::<&[u8], Refusal>(line)
        });
    let request_line = lines.next().unwrap_or(Ok(&[]))?;
    let http10 = check_request_line(request_line, limits)?;

    let (mut hosts, mut lengths, mut codings, mut fields) = (0, 0, 0, 0);
    let mut length = None;
    let mut upgrade = false;
    for line in lines {
        let line = line?;
        fields += 1;
        if fields > limits.max_fields {
            return Err(refuse(431, "too many header fields"));
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(refuse(400, "obsolete line folding"));
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(refuse(400, "a header line without `:`"));
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if !is_token(name) {
            return Err(refuse(400, "a malformed header name"));
        }
        if !is_field_value(value) {
            return Err(refuse(400, "a control character in a header value"));
        }
        // Lengths first: most fields are none of these.
        let is = |known: &[u8]| name.len() == known.len() && name.eq_ignore_ascii_case(known);
        if is(b"host") {
            hosts += 1;
            if !is_host(value) {
                return Err(refuse(400, "a malformed Host"));
            }
        } else if is(b"content-length") {
            lengths += 1;
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(refuse(400, "a malformed Content-Length"));
            }
            length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        } else if is(b"transfer-encoding") {
            codings += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                // `chunked` in any other form (`chunked, chunked`,
                // `gzip, chunked`, `xchunked`) is an attempt at an ambiguous
                // reading; other codings are merely not implemented.
                let mentions_chunked = value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
                return Err(if mentions_chunked {
                    refuse(400, "a Transfer-Encoding other than a single `chunked`")
                } else {
                    refuse(501, "a transfer coding that is not implemented")
                });
            }
        } else if is(b"upgrade") {
            upgrade = !http10;
        }
    }
    if hosts > 1 || (hosts == 0 && !http10) {
        return Err(refuse(400, "Host missing or repeated"));
    }
    if lengths > 1 {
        return Err(refuse(400, "Content-Length repeated"));
    }
    if codings > 1 {
        return Err(refuse(400, "Transfer-Encoding repeated"));
    }
    if codings == 1 && (lengths == 1 || http10) {
        return Err(refuse(
            400,
            "Transfer-Encoding with Content-Length, or in HTTP/1.0",
        ));
    }
    let framing = match (codings, length) {
        (1, _) => Framing::Chunked,
        (_, Some(n)) => Framing::Length(n),
        (_, None) if lengths == 1 => return Err(refuse(400, "a malformed Content-Length")),
        _ => Framing::None,
    };
    Ok(Head { framing, upgrade })
}

/// `method SP request-target SP HTTP-version`; returns whether it is
/// HTTP/1.0.
fn check_request_line(line: &[u8], limits: &HeadLimits) -> Result<bool, Refusal> {
    let mut spaces = memchr::memchr_iter(b' ', line);
    let (Some(first), Some(second), None) = (spaces.next(), spaces.next(), spaces.next()) else {
        return Err(refuse(400, "a malformed request line"));
    };
    let (method, target, version) = (
        &line[..first],
        &line[first + 1..second],
        &line[second + 1..],
    );
    if !is_token(method) || method.len() > MAX_METHOD {
        return Err(refuse(400, "a malformed method"));
    }
    if target.is_empty() {
        return Err(refuse(400, "a malformed request line"));
    }
    if target.len() > limits.max_target {
        return Err(refuse(414, "request target too long"));
    }
    // URI characters only: no controls, spaces, `#` or raw non-ASCII.
    if !is_target(target) {
        return Err(refuse(400, "a character not allowed in a request target"));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(refuse(505, "HTTP version not supported"));
        }
        _ => return Err(refuse(400, "a malformed HTTP version")),
    };
    if method == b"CONNECT" {
        return Err(refuse(405, "CONNECT is not supported"));
    }
    Ok(http10)
}

/// Longest chunk extension or trailer line kept for checking.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk size.
    Size {
        digits: u8,
        value: u64,
    },
    /// The rest of a chunk-size line (extensions), collected in `line`.
    Extension {
        size: u64,
    },
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// A trailer line (or the final empty line), collected in `line`.
    Trailer,
    Done,
}

/// What feeding bytes to a chunked body found.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    /// The body ended after `consumed` bytes of the last input.
    Done {
        consumed: usize,
    },
    Refused(Refusal),
}

/// A chunked request body being checked (RFC 9112 §7.1), fed as it
/// arrives. Chunk data is skipped in bulk; only the framing is read.
#[derive(Debug)]
pub struct ChunkedBody {
    state: Chunk,
    line: Vec<u8>,
    line_cr: bool,
    trailer_bytes: usize,
}

impl Default for ChunkedBody {
    fn default() -> Self {
        ChunkedBody {
            state: Chunk::Size {
                digits: 0,
                value: 0,
            },
            line: Vec::new(),
            line_cr: false,
            trailer_bytes: 0,
        }
    }
}

const BAD_CHUNK: Refusal = refuse(400, "malformed chunked body");

impl ChunkedBody {
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                Chunk::Done => return Progress::Done { consumed: i },
                Chunk::Data(remaining) => {
                    let take = remaining.min((input.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == remaining {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(remaining - take)
                    };
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            if let Err(refusal) = self.step(b) {
                return Progress::Refused(refusal);
            }
        }
        if self.state == Chunk::Done {
            Progress::Done { consumed: i }
        } else {
            Progress::NeedMore
        }
    }

    fn step(&mut self, b: u8) -> Result<(), Refusal> {
        self.state = match self.state {
            Chunk::Size { digits, value } => match hex(b) {
                Some(d) => {
                    if digits >= 16 {
                        return Err(refuse(400, "chunk size too large"));
                    }
                    Chunk::Size {
                        digits: digits + 1,
                        value: (value << 4) | u64::from(d),
                    }
                }
                None if digits == 0 => return Err(BAD_CHUNK),
                None => {
                    self.line.clear();
                    self.line_cr = false;
                    self.state = Chunk::Extension { size: value };
                    return self.step(b);
                }
            },
            Chunk::Extension { size } => {
                if !self.line_byte(b)? {
                    return Ok(());
                }
                if !is_chunk_extensions(&self.line) {
                    return Err(refuse(400, "malformed chunk extension"));
                }
                self.line.clear();
                if size == 0 {
                    Chunk::Trailer
                } else {
                    Chunk::Data(size)
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size {
                digits: 0,
                value: 0,
            },
            Chunk::DataCr | Chunk::DataLf => return Err(BAD_CHUNK),
            Chunk::Trailer => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(refuse(431, "trailers too large"));
                }
                if !self.line_byte(b)? {
                    return Ok(());
                }
                if self.line.is_empty() {
                    Chunk::Done
                } else {
                    check_trailer(&self.line)?;
                    self.line.clear();
                    Chunk::Trailer
                }
            }
            Chunk::Data(_) | Chunk::Done => self.state,
        };
        Ok(())
    }

    /// Collects a line; `true` once its CRLF has arrived (the line is in
    /// `self.line` without it).
    fn line_byte(&mut self, b: u8) -> Result<bool, Refusal> {
        match (self.line_cr, b) {
            (false, b'\r') => {
                self.line_cr = true;
                Ok(false)
            }
            (true, b'\n') => {
                self.line_cr = false;
                Ok(true)
            }
            (true, _) => Err(refuse(400, "a bare CR in a chunked body")),
            (false, b'\n') => Err(refuse(400, "a bare LF in a chunked body")),
            (false, b) => {
                if self.line.len() >= MAX_CHUNK_LINE {
                    return Err(refuse(400, "chunk line too long"));
                }
                self.line.push(b);
                Ok(false)
            }
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )`
fn is_chunk_extensions(mut rest: &[u8]) -> bool {
    fn skip_bws(bytes: &[u8]) -> &[u8] {
        let n = bytes
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        &bytes[n..]
    }
    fn take_token(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
        let n = bytes.iter().take_while(|b| is_tchar(**b)).count();
        (n > 0).then(|| bytes.split_at(n))
    }
    loop {
        rest = skip_bws(rest);
        if rest.is_empty() {
            return true;
        }
        let Some(after) = rest.strip_prefix(b";") else {
            return false;
        };
        let Some((_, after)) = take_token(skip_bws(after)) else {
            return false;
        };
        let after_name = skip_bws(after);
        rest = match after_name.strip_prefix(b"=") {
            None => after,
            Some(value) => {
                let value = skip_bws(value);
                if let Some(quoted) = value.strip_prefix(b"\"") {
                    match quoted_string_end(quoted) {
                        Some(end) => &quoted[end..],
                        None => return false,
                    }
                } else {
                    match take_token(value) {
                        Some((_, after)) => after,
                        None => return false,
                    }
                }
            }
        };
    }
}

/// The index just past the closing quote of a quoted-string's contents.
fn quoted_string_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let next = *bytes.get(i + 1)?;
                if !(next == b'\t' || next == b' ' || (0x21..=0x7e).contains(&next) || next >= 0x80)
                {
                    return None;
                }
                i += 2;
            }
            b if b == b'\t'
                || b == b' '
                || b == 0x21
                || (0x23..=0x7e).contains(&b)
                || b >= 0x80 =>
            {
                i += 1
            }
            _ => return None,
        }
    }
    None
}

fn check_trailer(line: &[u8]) -> Result<(), Refusal> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(refuse(400, "obsolete line folding in trailers"));
    }
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return Err(refuse(400, "a malformed trailer"));
    };
    if !is_token(&line[..colon]) || !is_field_value(trim_ows(&line[colon + 1..])) {
        return Err(refuse(400, "a malformed trailer"));
    }
    Ok(())
}
