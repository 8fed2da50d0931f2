use super::framing::*;

const LIMITS: HeadLimits = HeadLimits {
    max_target: 64,
    max_head: 512,
    max_fields: 8,
};

fn check(head: &str) -> Result<Head, u16> {
    match scan_head(head.as_bytes(), &LIMITS) {
        Scan::Complete { start, end } => {
            check_head(&head.as_bytes()[start..end], &LIMITS).map_err(|r| r.status)
        }
        Scan::Refused(r) => Err(r.status),
        Scan::Incomplete => Err(0),
    }
}

#[test]
fn heads() {
    let ok = |framing| {
        Ok(Head {
            framing,
            upgrade: false,
        })
    };
    let cases: &[(&str, Result<Head, u16>)] = &[
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", ok(Framing::None)),
        ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ok(Framing::None)),
        ("GET / HTTP/1.0\r\n\r\n", ok(Framing::None)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\n", ok(Framing::Length(5))),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", ok(Framing::Chunked)),
        (
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            Ok(Head { framing: Framing::None, upgrade: true }),
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: caf\u{e9}\r\n\r\n", ok(Framing::None)),
        // Framing.
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Err(501)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Err(400)),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", Err(400)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n", Err(400)),
        // Line endings, folding, controls.
        ("GET / HTTP/1.1\nHost: a\n\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\r\nX\x01: a\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n", Err(400)),
        // Host.
        ("GET / HTTP/1.1\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Err(400)),
        ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Err(400)),
        // Request line.
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", Err(505)),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err(505)),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Err(505)),
        ("GET / HTTP/1\r\nHost: a\r\n\r\n", Err(400)),
        ("GET / http/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ("GET /\r\nHost: a\r\n\r\n", Err(400)),
        ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", Err(405)),
        ("GARBAGE\r\n\r\n", Err(400)),
        // Sizes.
        (&*format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100)), Err(414)),
        (&*format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(600)), Err(431)),
        ("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\nG: 1\r\nH: 1\r\n\r\n", Err(431)),
    ];
    for (head, expected) in cases {
        assert_eq!(&check(head), expected, "{head:?}");
    }
}

#[test]
fn heads_are_found_across_reads() {
    assert_eq!(
        scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n", &LIMITS),
        Scan::Incomplete
    );
    assert_eq!(
        scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r", &LIMITS),
        Scan::Incomplete
    );
    assert_eq!(
        scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next", &LIMITS),
        Scan::Complete { start: 0, end: 27 }
    );
    assert_eq!(scan_head(b"\r", &LIMITS), Scan::Incomplete);
    // A request line that can no longer fit, before its end arrives.
    assert!(matches!(
        scan_head(format!("GET /{}", "a".repeat(200)).as_bytes(), &LIMITS),
        Scan::Refused(Refusal { status: 414, .. })
    ));
}

fn feed_all(body: &[u8], step: usize) -> Progress {
    let mut chunked = ChunkedBody::default();
    let mut offset = 0;
    for piece in body.chunks(step) {
        match chunked.feed(piece) {
            Progress::NeedMore => offset += piece.len(),
            Progress::Done { consumed } => {
                return Progress::Done {
                    consumed: offset + consumed,
                }
            }
            refused => return refused,
        }
    }
    Progress::NeedMore
}

#[test]
fn chunked_bodies() {
    let done = |n| Progress::Done { consumed: n };
    let refused =
        |status| move |p: &Progress| matches!(p, Progress::Refused(r) if r.status == status);
    for step in [1, 3, 1000] {
        let body = b"5\r\nhello\r\n0\r\n\r\nGET /next";
        assert_eq!(feed_all(body, step), done(15), "step {step}");
        let with_ext = b"5 ; name = \"q\\\"v\" ;x\r\nhello\r\n000;a=b\r\nTrailer-A: 1\r\n\r\n";
        assert_eq!(
            feed_all(with_ext, step),
            done(with_ext.len()),
            "step {step}"
        );
        assert_eq!(feed_all(b"A\r\n0123456789\r\n0\r\n\r\n", step), done(20));
        for (bad, status) in [
            (&b"5;ext\nhello\r\n0\r\n\r\n"[..], 400),
            (b"5\nhello\r\n0\r\n\r\n", 400),
            (b"zz\r\n", 400),
            (b"\r\n", 400),
            (b"-5\r\n", 400),
            (b"fffffffffffffffff\r\n", 400),
            (b"5\r\nhelloX\r\n", 400),
            (b"5\r\nhello\n0\r\n\r\n", 400),
            (b"5;\r\nhello\r\n", 400),
            (b"5;a=\"unterminated\r\n", 400),
            (b"5;a=\"ctl\x01\"\r\n", 400),
            (b"5;=b\r\n", 400),
            (b"0\r\nX: a\r\n b\r\n\r\n", 400),
            (b"0\r\nno colon\r\n\r\n", 400),
            (b"0\r\nX: a\rb\r\n\r\n", 400),
        ] {
            let got = feed_all(bad, step);
            assert!(
                refused(status)(&got),
                "{:?} step {step}: {got:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
    assert_eq!(feed_all(b"5\r\nhel", 1000), Progress::NeedMore);
}
