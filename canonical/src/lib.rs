//! The one canonical form of a request target (RFC 3986 §6, RFC 9110
//! §4.2.3, RFC 9112 §3.2).
//!
//! Why it exists: a gateway that decides on one spelling of a path and
//! forwards another lets the backend's own normalisation undo its
//! decisions — `/public/../admin` matches a public route, and the backend
//! serves `/admin` (Pomerium CVE-2021-39206, and every "path-based ACL"
//! bypass). So the target is reduced once, at the door, to a form in which
//! every spelling of the same resource is the same string; routing, policy,
//! rate-limit keys and the backend all read that string and nothing else.
//!
//! The canonical path:
//! - percent-encoded unreserved characters are decoded (`%61` → `a`,
//!   `%2e` → `.`), every other escape is upper case (`%7c` → `%7C`);
//! - characters that are not allowed in a path but carry no structure
//!   (`"`, `<`, `>`, `^`, `` ` ``, `{`, `|`, `}`, non-ASCII) are
//!   percent-encoded;
//! - `.` and `..` segments are resolved, never above the root;
//! - runs of `/` are merged into one (unless configured otherwise);
//! - the decoded bytes must be UTF-8 (this refuses overlong encodings such
//!   as `%C0%AE`, once read as `.` by some servers);
//! - refused: control characters and space (raw or encoded), `#`, a `%`
//!   without two hex digits, an encoded `/` or `\` and a raw `\` (unless
//!   kept escaped), `;` path parameters (unless kept; a `.;` or `..;`
//!   segment is refused even then, since Tomcat and Jetty read it as a dot
//!   segment).
//!
//! The query is passed as received (non-ASCII bytes percent-encoded,
//! control characters refused).

use std::borrow::Cow;

/// How encoded slashes (`%2F`), encoded backslashes (`%5C`) and raw
/// backslashes are treated. Backends disagree about them: some decode
/// `%2F` into a segment separator, Windows servers read `\` as `/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400 Bad Request.
    #[default]
    Reject,
    /// Kept as the escapes `%2F` and `%5C`: part of a segment, never a
    /// separator (for APIs whose identifiers contain slashes).
    KeepEscaped,
}

/// How `;` in a path is treated. Java servlet containers strip `;name=value`
/// from each segment before matching (`/admin;x` serves `/admin`), so the
/// gateway and such a backend disagree about which resource is meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PathParameters {
    /// 400 Bad Request (as Spring Security's strict firewall does).
    #[default]
    Reject,
    /// Kept as data. A `.;…` or `..;…` segment is still refused.
    Keep,
}

/// The canonicalisation settings (the gateway's `server.paths`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Merge runs of `/` into one.
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub path_parameters: PathParameters,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            path_parameters: PathParameters::Reject,
        }
    }
}

/// Why a target was refused (answered 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the request target must start with `/`")]
    NotOriginForm,
    #[error("`*` is a request target only for OPTIONS")]
    AsteriskNotOptions,
    #[error("the absolute-form target is malformed")]
    BadAbsoluteForm,
    #[error("the absolute-form target names another host than `Host`")]
    AuthorityMismatch,
    #[error("a control character or space in the request target")]
    ControlCharacter,
    #[error("a `%` not followed by two hex digits")]
    BadPercentEncoding,
    #[error("an encoded slash or backslash in the path")]
    EscapedSlash,
    #[error("a backslash in the path")]
    Backslash,
    #[error("the decoded path is not UTF-8")]
    InvalidUtf8,
    #[error("`;` parameters in the path")]
    PathParameter,
    #[error("a dot segment with `;` parameters")]
    DotSegmentParameter,
    #[error("a fragment (`#`) in the request target")]
    Fragment,
}

/// A request target in canonical form.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Path and query to route on and to forward. Borrowed exactly when
    /// the target already was canonical origin-form.
    Origin(Cow<'a, str>),
    /// `OPTIONS *`: the server itself, not a resource.
    Asterisk,
}

/// Canonicalises a raw request target (the bytes of the request line, or
/// HTTP/2's `:path`). `host` is the request's `Host`, which an
/// absolute-form target must agree with.
pub fn canonical_target<'a>(
    raw: &'a [u8],
    is_options: bool,
    host: Option<&[u8]>,
    rules: &Rules,
) -> Result<Target<'a>, Rejection> {
    match raw.first() {
        Some(b'/') => canonical_origin(raw, rules, false).map(Target::Origin),
        Some(b'*') if raw.len() == 1 => {
            if is_options {
                Ok(Target::Asterisk)
            } else {
                Err(Rejection::AsteriskNotOptions)
            }
        }
        _ => {
            let rest = absolute_form_rest(raw, host)?;
            if rest.is_empty() || rest[0] == b'?' {
                // `http://host?q` means the root (RFC 9112 §3.2.1).
                let mut rooted = Vec::with_capacity(rest.len() + 1);
                rooted.push(b'/');
                rooted.extend_from_slice(rest);
                let target = canonical_origin(&rooted, rules, true)?;
                Ok(Target::Origin(Cow::Owned(target.into_owned())))
            } else {
                canonical_origin(rest, rules, true).map(Target::Origin)
            }
        }
    }
}

/// The part after the authority of an absolute-form target, once the
/// authority is known to agree with `Host`.
fn absolute_form_rest<'a>(raw: &'a [u8], host: Option<&[u8]>) -> Result<&'a [u8], Rejection> {
    let Some(colon) = raw.windows(3).position(|w| w == b"://") else {
        return Err(Rejection::NotOriginForm);
    };
    let scheme = &raw[..colon];
    let default_port: &[u8] = if scheme.eq_ignore_ascii_case(b"http") {
        b"80"
    } else if scheme.eq_ignore_ascii_case(b"https") {
        b"443"
    } else {
        return Err(Rejection::BadAbsoluteForm);
    };
    let after = &raw[colon + 3..];
    let end = after
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after.len());
    let authority = &after[..end];
    // Userinfo is forbidden in http(s) URIs (RFC 9110 §4.2.4).
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(Rejection::BadAbsoluteForm);
    }
    let Some(host) = host else {
        return Err(Rejection::AuthorityMismatch);
    };
    let strip_default = |a: &[u8]| -> usize {
        match a.iter().rposition(|b| *b == b':') {
            Some(i) if &a[i + 1..] == default_port => i,
            _ => a.len(),
        }
    };
    let (ours, theirs) = (
        &authority[..strip_default(authority)],
        &host[..strip_default(host)],
    );
    if !ours.eq_ignore_ascii_case(theirs) {
        return Err(Rejection::AuthorityMismatch);
    }
    Ok(&after[end..])
}

/// Canonicalises an origin-form target (starts with `/`). `force_owned`:
/// the caller changed the target already, so an unchanged path is still a
/// change.
fn canonical_origin<'a>(
    raw: &'a [u8],
    rules: &Rules,
    force_owned: bool,
) -> Result<Cow<'a, str>, Rejection> {
    let (path, query) = match raw.iter().position(|b| *b == b'?') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let path = canonical_path(path, rules)?;
    let query = query.map(canonical_query).transpose()?;
    let unchanged =
        matches!(path, Cow::Borrowed(_)) && !matches!(query, Some(Cow::Owned(_))) && !force_owned;
    if unchanged {
        // Every byte was checked to be ASCII on the way.
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| Rejection::InvalidUtf8);
    }
    let mut out = path.into_owned();
    if let Some(query) = query {
        out.push('?');
        out.push_str(&query);
    }
    Ok(Cow::Owned(out))
}

/// Query bytes a URI may not hold as they are: non-ASCII, and `"`, `<`,
/// `>` (RFC 3986 §2; HTTP libraries refuse them).
fn query_needs_escape(b: u8) -> bool {
    b >= 0x80 || matches!(b, b'"' | b'<' | b'>')
}

/// The query: passed as received, except that bytes a URI may not hold are
/// percent-encoded (the same bytes once decoded) and control characters
/// are refused.
fn canonical_query(query: &[u8]) -> Result<Cow<'_, str>, Rejection> {
    let mut needs_encoding = false;
    for &b in query {
        match b {
            0..=0x20 | 0x7f => return Err(Rejection::ControlCharacter),
            b'#' => return Err(Rejection::Fragment),
            b if query_needs_escape(b) => needs_encoding = true,
            _ => {}
        }
    }
    if !needs_encoding {
        return std::str::from_utf8(query)
            .map(Cow::Borrowed)
            .map_err(|_| Rejection::InvalidUtf8);
    }
    let mut out = String::with_capacity(query.len() * 3);
    for &b in query {
        if query_needs_escape(b) {
            push_escape(&mut out, b);
        } else {
            out.push(b as char);
        }
    }
    Ok(Cow::Owned(out))
}

/// Canonicalises a path (starts with `/`, no query). Borrowed when the
/// path already is canonical.
pub fn canonical_path<'a>(path: &'a [u8], rules: &Rules) -> Result<Cow<'a, str>, Rejection> {
    if path.first() != Some(&b'/') {
        return Err(Rejection::NotOriginForm);
    }
    if is_canonical(path, rules) {
        // is_canonical admits ASCII only.
        return std::str::from_utf8(path)
            .map(Cow::Borrowed)
            .map_err(|_| Rejection::InvalidUtf8);
    }
    let encoded = encode(path, rules)?;
    let resolved = resolve_segments(&encoded, rules)?;
    if resolved.as_bytes() == path {
        // Equal to its canonical form, hence ASCII.
        return std::str::from_utf8(path)
            .map(Cow::Borrowed)
            .map_err(|_| Rejection::InvalidUtf8);
    }
    Ok(Cow::Owned(resolved))
}

/// Whether the path is canonical as it is: only literal path characters,
/// no escapes, and no segment that resolution would change. The common
/// case, decided without allocating.
fn is_canonical(path: &[u8], rules: &Rules) -> bool {
    let params_ok = rules.path_parameters == PathParameters::Keep;
    let literal = path
        .iter()
        .all(|&b| b == b'/' || (is_pchar_literal(b) && (b != b';' || params_ok)));
    if !literal {
        return false;
    }
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let dot_like = segment == b"."
            || segment == b".."
            || segment.starts_with(b".;")
            || segment.starts_with(b"..;");
        if dot_like || (segment.is_empty() && !last && rules.merge_slashes) {
            return false;
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `pchar` without `pct-encoded` (RFC 3986 §3.3).
fn is_pchar_literal(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Checks that the decoded byte stream is UTF-8, one byte at a time.
#[derive(Default)]
struct Utf8Check {
    buf: [u8; 4],
    len: usize,
    need: usize,
}

impl Utf8Check {
    fn ascii(&self) -> Result<(), Rejection> {
        if self.need == 0 {
            Ok(())
        } else {
            Err(Rejection::InvalidUtf8)
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), Rejection> {
        if self.need == 0 {
            self.need = match b {
                0xc2..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf4 => 4,
                _ => return Err(Rejection::InvalidUtf8),
            };
            self.len = 0;
        }
        self.buf[self.len] = b;
        self.len += 1;
        if self.len == self.need {
            // The standard decoder refuses overlong forms and surrogates.
            std::str::from_utf8(&self.buf[..self.len]).map_err(|_| Rejection::InvalidUtf8)?;
            self.need = 0;
        }
        Ok(())
    }
}

/// First pass: every byte to its canonical spelling (decoded unreserved,
/// upper-case escapes), refusing what may not appear. `/` in the output
/// is always a separator.
fn encode(path: &[u8], rules: &Rules) -> Result<String, Rejection> {
    let mut out = String::with_capacity(path.len() + 8);
    let mut utf8 = Utf8Check::default();
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let value = match (path.get(i + 1), path.get(i + 2)) {
                (Some(&h), Some(&l)) => match (hex_value(h), hex_value(l)) {
                    (Some(h), Some(l)) => (h << 4) | l,
                    _ => return Err(Rejection::BadPercentEncoding),
                },
                _ => return Err(Rejection::BadPercentEncoding),
            };
            i += 3;
            match value {
                v if is_unreserved(v) => {
                    utf8.ascii()?;
                    out.push(v as char);
                }
                b'/' | b'\\' => {
                    utf8.ascii()?;
                    match rules.escaped_slashes {
                        EscapedSlashes::Reject => return Err(Rejection::EscapedSlash),
                        EscapedSlashes::KeepEscaped => push_escape(&mut out, value),
                    }
                }
                0..=0x1f | 0x7f => return Err(Rejection::ControlCharacter),
                0x80.. => {
                    utf8.byte(value)?;
                    push_escape(&mut out, value);
                }
                v => {
                    utf8.ascii()?;
                    push_escape(&mut out, v);
                }
            }
            continue;
        }
        i += 1;
        match b {
            0x80.. => {
                utf8.byte(b)?;
                push_escape(&mut out, b);
            }
            b'/' => {
                utf8.ascii()?;
                out.push('/');
            }
            b if is_pchar_literal(b) => {
                utf8.ascii()?;
                out.push(b as char);
            }
            b'\\' => match rules.escaped_slashes {
                EscapedSlashes::Reject => return Err(Rejection::Backslash),
                EscapedSlashes::KeepEscaped => {
                    utf8.ascii()?;
                    push_escape(&mut out, b);
                }
            },
            b'#' => return Err(Rejection::Fragment),
            0..=0x20 | 0x7f => return Err(Rejection::ControlCharacter),
            // `"` `<` `>` `^` `` ` `` `{` `|` `}`: not allowed in a URI,
            // but meaning nothing but themselves.
            other => {
                utf8.ascii()?;
                push_escape(&mut out, other);
            }
        }
    }
    utf8.ascii()?;
    Ok(out)
}

/// Second pass: dot segments resolved (RFC 3986 §5.2.4, never above the
/// root), empty segments merged, `;` parameters checked.
fn resolve_segments(encoded: &str, rules: &Rules) -> Result<String, Rejection> {
    let rest = encoded.strip_prefix('/').unwrap_or(encoded);
    let mut kept: Vec<&str> = Vec::new();
    // A path ending in `/`, `/.` or `/..` names a directory: keep the slash.
    let mut trailing_slash = false;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        trailing_slash = false;
        match segment {
            "." => trailing_slash = last,
            ".." => {
                kept.pop();
                trailing_slash = last;
            }
            "" if last => trailing_slash = true,
            "" if rules.merge_slashes => {}
            segment => {
                if let Some((base, _)) = segment.split_once(';') {
                    if rules.path_parameters == PathParameters::Reject {
                        return Err(Rejection::PathParameter);
                    }
                    if base == "." || base == ".." {
                        return Err(Rejection::DotSegmentParameter);
                    }
                }
                kept.push(segment);
            }
        }
    }
    let mut out = String::with_capacity(encoded.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
