//! Who the client is, behind proxies we trust.
//!
//! A proxy appends the address it received a request from to the end of
//! the list (`X-Forwarded-For`, or RFC 7239 `Forwarded: for=`); everything
//! to the left may be whatever the client wrote. So the list is read from
//! the right: hops that are trusted proxies are skipped, and the first one
//! that is not is the client. Every line of the header counts (a list may
//! be split over lines, RFC 9110 §5.3).
//!
//! An entry that is not an address (`unknown`, an obfuscated `_hidden`
//! node, garbage) stops the walk at the nearest trusted hop: skipping it
//! would step into the part the client wrote, which is how a client picks
//! its own address. Which header to read is configuration, not guesswork:
//! a proxy that maintains one header usually passes the other through from
//! the client untouched.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The header trusted proxies write the client's address in (config:
/// `x-forwarded-for` or `forwarded`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1;proto=https`.
    Forwarded,
}

/// The client's address: `peer` itself unless it is a trusted proxy, else
/// the right-most hop of `source` that is not one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet], source: Source) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let name = match source {
        Source::XForwardedFor => "x-forwarded-for",
        Source::Forwarded => "forwarded",
    };
    // Lines in order, then each line's entries: read right to left.
    let lines: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    let mut nearest = peer;
    for line in lines.iter().rev() {
        for entry in line.split(|b| *b == b',').rev() {
            let hop = match source {
                Source::XForwardedFor => address(entry),
                Source::Forwarded => forwarded_for(entry).and_then(address),
            };
            match hop {
                Some(ip) if is_trusted(&ip) => nearest = ip,
                Some(ip) => return ip,
                None => return nearest,
            }
        }
    }
    nearest
}

/// The `for=` parameter of one `Forwarded` element (`for=…;proto=…`).
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|b| *b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        name.eq_ignore_ascii_case(b"for").then(|| unquote(value))
    })
}

fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    }
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, or with a
/// port (`192.0.2.1:4711`, `[2001:db8::1]:4711`, `[2001:db8::1]`).
fn address(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(trim(text)).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(name, line.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        let xff = |lines: &[&str]| headers("x-forwarded-for", lines);
        let fwd = |lines: &[&str]| headers("forwarded", lines);
        use Source::{Forwarded, XForwardedFor};
        // (peer, headers, source, the client)
        let cases: Vec<(IpAddr, HeaderMap, Source, &str)> = vec![
            // From an untrusted peer, nothing it says counts.
            (stranger, xff(&["203.0.113.9"]), XForwardedFor, "192.0.2.1"),
            (stranger, fwd(&["for=203.0.113.9"]), Forwarded, "192.0.2.1"),
            // No header: the proxy itself.
            (proxy, HeaderMap::new(), XForwardedFor, "10.0.0.2"),
            // The right-most untrusted hop, not the left-most (spoofable).
            (
                proxy,
                xff(&["1.1.1.1, 198.51.100.7, 10.1.1.1"]),
                XForwardedFor,
                "198.51.100.7",
            ),
            // Several lines are one list, in order.
            (
                proxy,
                xff(&["1.1.1.1", "198.51.100.7", "10.1.1.1"]),
                XForwardedFor,
                "198.51.100.7",
            ),
            (
                proxy,
                xff(&["1.1.1.1, 198.51.100.7", "10.1.1.1, 10.2.2.2"]),
                XForwardedFor,
                "198.51.100.7",
            ),
            // Ports and brackets as some proxies write them.
            (
                proxy,
                xff(&["198.51.100.7:4711"]),
                XForwardedFor,
                "198.51.100.7",
            ),
            (
                proxy,
                xff(&["[2001:db8::7]:4711"]),
                XForwardedFor,
                "2001:db8::7",
            ),
            (
                proxy,
                xff(&["2001:db8::7, fd00::1"]),
                XForwardedFor,
                "2001:db8::7",
            ),
            // Not an address: stop at the nearest trusted hop, never step
            // over it into what the client wrote.
            (
                proxy,
                xff(&["6.6.6.6, unknown, 10.1.1.1"]),
                XForwardedFor,
                "10.1.1.1",
            ),
            (
                proxy,
                xff(&["6.6.6.6, 198.51.100.7:x"]),
                XForwardedFor,
                "10.0.0.2",
            ),
            (proxy, xff(&["6.6.6.6,"]), XForwardedFor, "10.0.0.2"),
            // Only trusted hops: the left-most of them.
            (
                proxy,
                xff(&["10.3.3.3, 10.1.1.1"]),
                XForwardedFor,
                "10.3.3.3",
            ),
            // RFC 7239: for= with quotes, IPv6 brackets, ports, other params,
            // several elements and lines; case-insensitive names.
            (
                proxy,
                fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"]),
                Forwarded,
                "192.0.2.60",
            ),
            (
                proxy,
                fwd(&["for=\"[2001:db8:cafe::17]:4711\""]),
                Forwarded,
                "2001:db8:cafe::17",
            ),
            (
                proxy,
                fwd(&["For=6.6.6.6, for=198.51.100.7", "for=10.1.1.1;proto=https"]),
                Forwarded,
                "198.51.100.7",
            ),
            (
                proxy,
                fwd(&["for=6.6.6.6, for=unknown, for=10.1.1.1"]),
                Forwarded,
                "10.1.1.1",
            ),
            (
                proxy,
                fwd(&["for=6.6.6.6, for=_hidden"]),
                Forwarded,
                "10.0.0.2",
            ),
            (proxy, fwd(&["proto=https"]), Forwarded, "10.0.0.2"),
            // The header not chosen is not read (a client could write it).
            (proxy, fwd(&["for=6.6.6.6"]), XForwardedFor, "10.0.0.2"),
            (proxy, xff(&["6.6.6.6"]), Forwarded, "10.0.0.2"),
        ];
        for (i, (peer, headers, source, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                client_ip(peer, &headers, &trusted, source),
                want.parse::<IpAddr>().unwrap(),
                "case {i}: {headers:?}"
            );
        }
    }
}
