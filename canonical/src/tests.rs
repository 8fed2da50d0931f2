use super::*;

fn path(input: &str) -> Result<String, Rejection> {
    canonical_path(input.as_bytes(), &Rules::default()).map(Cow::into_owned)
}

fn with(rules: Rules, input: &str) -> Result<String, Rejection> {
    canonical_path(input.as_bytes(), &rules).map(Cow::into_owned)
}

const KEEP: Rules = Rules {
    merge_slashes: false,
    escaped_slashes: EscapedSlashes::KeepEscaped,
    path_parameters: PathParameters::Keep,
};

#[test]
fn canonical_paths_are_borrowed() {
    for p in [
        "/",
        "/a",
        "/a/b/",
        "/users/42",
        "/a-b_c~d.e",
        "/a:b@c!$&'()*+,=",
    ] {
        let out = canonical_path(p.as_bytes(), &Rules::default()).unwrap();
        assert!(matches!(out, Cow::Borrowed(_)), "{p}");
        assert_eq!(out, p);
    }
}

#[test]
fn table() {
    use Rejection::*;
    let cases: &[(&str, Result<&str, Rejection>)] = &[
        ("/public/../admin/x", Ok("/admin/x")),
        ("/public/%2e%2e/admin/x", Ok("/admin/x")),
        ("/public/%2E%2E/admin/x", Ok("/admin/x")),
        ("/public/.%2e/admin/x", Ok("/admin/x")),
        ("/public/..%2fadmin/x", Err(EscapedSlash)),
        ("/public/..%2Fadmin/x", Err(EscapedSlash)),
        ("/public/..%5cadmin", Err(EscapedSlash)),
        ("/public\\..\\admin", Err(Backslash)),
        ("//admin", Ok("/admin")),
        ("/./admin", Ok("/admin")),
        ("/%61dmin", Ok("/admin")),
        ("/%41DMIN", Ok("/ADMIN")),
        ("/admin/.", Ok("/admin/")),
        ("/admin/..", Ok("/")),
        ("/../../admin", Ok("/admin")),
        ("/a/b/../../../../c", Ok("/c")),
        ("/a//b///c//", Ok("/a/b/c/")),
        ("/a/./b/.", Ok("/a/b/")),
        ("/%7e%7Euser", Ok("/~~user")),
        ("/a%7cb", Ok("/a%7Cb")),
        ("/a|b", Ok("/a%7Cb")),
        ("/a%20b", Ok("/a%20b")),
        ("/a b", Err(ControlCharacter)),
        ("/a\tb", Err(ControlCharacter)),
        ("/a%00b", Err(ControlCharacter)),
        ("/a%0ab", Err(ControlCharacter)),
        ("/a%7fb", Err(ControlCharacter)),
        ("/a%zzb", Err(BadPercentEncoding)),
        ("/a%2", Err(BadPercentEncoding)),
        ("/a%", Err(BadPercentEncoding)),
        ("/%C0%AE%C0%AE/admin", Err(InvalidUtf8)),
        ("/%c0%2e", Err(InvalidUtf8)),
        ("/%e0%80%ae", Err(InvalidUtf8)),
        ("/%ed%a0%80", Err(InvalidUtf8)),
        ("/%ff", Err(InvalidUtf8)),
        ("/%c3", Err(InvalidUtf8)),
        ("/caf%c3%a9", Ok("/caf%C3%A9")),
        ("/café", Ok("/caf%C3%A9")),
        ("/admin;jsessionid=1", Err(PathParameter)),
        ("/public/..;/admin", Err(PathParameter)),
        ("/a%3bb", Ok("/a%3Bb")),
        ("/a#frag", Err(Fragment)),
        ("/a%23b", Ok("/a%23b")),
        ("/%252e%252e/admin", Ok("/%252e%252e/admin")),
        ("/a%2Fb", Err(EscapedSlash)),
        ("admin/x", Err(NotOriginForm)),
        ("", Err(NotOriginForm)),
    ];
    for (input, expected) in cases {
        let got = path(input);
        assert_eq!(
            got.as_deref().map_err(|e| *e),
            expected.as_ref().map(|s| *s).map_err(|e| *e),
            "{input:?}"
        );
    }
}

#[test]
fn configurable_rules() {
    assert_eq!(with(KEEP, "/a%2fb").unwrap(), "/a%2Fb");
    assert_eq!(with(KEEP, "/a%5Cb").unwrap(), "/a%5Cb");
    assert_eq!(with(KEEP, "/a\\b").unwrap(), "/a%5Cb");
    // An escaped slash is data, never a separator: `..%2F` is no dot segment.
    assert_eq!(
        with(KEEP, "/public/..%2Fadmin").unwrap(),
        "/public/..%2Fadmin"
    );
    assert_eq!(with(KEEP, "/a//b").unwrap(), "/a//b");
    assert_eq!(with(KEEP, "/a//../b").unwrap(), "/a/b");
    assert_eq!(
        with(KEEP, "/admin;jsessionid=1").unwrap(),
        "/admin;jsessionid=1"
    );
    assert_eq!(
        with(KEEP, "/public/..;/admin"),
        Err(Rejection::DotSegmentParameter)
    );
    assert_eq!(
        with(KEEP, "/public/.;x/admin"),
        Err(Rejection::DotSegmentParameter)
    );
    assert_eq!(
        with(KEEP, "/public/%2e%2e;/admin"),
        Err(Rejection::DotSegmentParameter)
    );
}

#[test]
fn targets() {
    fn t(
        raw: &'static str,
        options: bool,
        host: Option<&str>,
    ) -> Result<Target<'static>, Rejection> {
        canonical_target(
            raw.as_bytes(),
            options,
            host.map(str::as_bytes),
            &Rules::default(),
        )
    }
    assert_eq!(
        t("/a?x=%2e%2e/../", false, None),
        Ok(Target::Origin(Cow::Borrowed("/a?x=%2e%2e/../")))
    );
    assert_eq!(
        t("/b/../a?q", false, None),
        Ok(Target::Origin(Cow::Owned("/a?q".into())))
    );
    assert_eq!(
        t("/a?é", false, None),
        Ok(Target::Origin(Cow::Owned("/a?%C3%A9".into())))
    );
    assert_eq!(t("/a?x y", false, None), Err(Rejection::ControlCharacter));
    assert_eq!(t("*", true, None), Ok(Target::Asterisk));
    assert_eq!(t("*", false, None), Err(Rejection::AsteriskNotOptions));
    assert_eq!(
        t(
            "http://api.example.com/a/../b?q",
            false,
            Some("API.example.com")
        ),
        Ok(Target::Origin(Cow::Owned("/b?q".into())))
    );
    assert_eq!(
        t(
            "HTTP://api.example.com:80/b",
            false,
            Some("api.example.com")
        ),
        Ok(Target::Origin(Cow::Owned("/b".into())))
    );
    assert_eq!(
        t(
            "https://api.example.com/b",
            false,
            Some("api.example.com:443")
        ),
        Ok(Target::Origin(Cow::Owned("/b".into())))
    );
    assert_eq!(
        t("http://api.example.com", false, Some("api.example.com")),
        Ok(Target::Origin(Cow::Owned("/".into())))
    );
    assert_eq!(
        t("http://api.example.com?q=1", false, Some("api.example.com")),
        Ok(Target::Origin(Cow::Owned("/?q=1".into())))
    );
    assert_eq!(
        t("http://evil.example/admin", false, Some("api.example.com")),
        Err(Rejection::AuthorityMismatch)
    );
    assert_eq!(
        t(
            "http://api.example.com:8080/b",
            false,
            Some("api.example.com")
        ),
        Err(Rejection::AuthorityMismatch)
    );
    assert_eq!(
        t("http://api.example.com/b", false, None),
        Err(Rejection::AuthorityMismatch)
    );
    assert_eq!(
        t(
            "http://user@api.example.com/b",
            false,
            Some("api.example.com")
        ),
        Err(Rejection::BadAbsoluteForm)
    );
    assert_eq!(
        t("ftp://api.example.com/b", false, Some("api.example.com")),
        Err(Rejection::BadAbsoluteForm)
    );
    assert_eq!(
        t("admin/x", false, Some("api.example.com")),
        Err(Rejection::NotOriginForm)
    );
    assert_eq!(
        t("api.example.com:443", false, Some("api.example.com")),
        Err(Rejection::NotOriginForm)
    );
}

/// Every canonical output is a valid `http::Uri` path and is its own
/// canonical form (idempotence), for every single byte and every escape.
#[test]
fn outputs_are_fixed_points() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for b in 0u8..=255 {
        inputs.push(vec![b'/', b'a', b, b'b']);
        inputs.push(format!("/a%{b:02x}b").into_bytes());
        inputs.push(format!("/x/%{b:02X}/../y").into_bytes());
    }
    for rules in [Rules::default(), KEEP] {
        for input in &inputs {
            if let Ok(out) = canonical_path(input, &rules) {
                let again = canonical_path(out.as_bytes(), &rules).unwrap();
                assert_eq!(again, out, "{:?}", String::from_utf8_lossy(input));
                assert!(matches!(again, Cow::Borrowed(_)), "{out}");
                assert!(out.is_ascii());
            }
        }
    }
}

/// Found by the `canonical` fuzz target: `>` in a query made a target that
/// HTTP libraries refuse.
#[test]
fn query_bytes_a_uri_cannot_hold_are_escaped() {
    fn t(raw: &[u8]) -> Result<Target<'_>, Rejection> {
        canonical_target(raw, false, None, &Rules::default())
    }
    assert_eq!(
        t(b"/?///>/"),
        Ok(Target::Origin(Cow::Owned("/?///%3E/".into())))
    );
    assert_eq!(
        t(b"/a?x=\"<y>\"&z={|}^`"),
        Ok(Target::Origin(Cow::Owned(
            "/a?x=%22%3Cy%3E%22&z={|}^`".into()
        )))
    );
    // Every byte in a query comes out as a valid URI query.
    for b in 0x21u8..=0xff {
        if let Ok(Target::Origin(target)) = t(&[b'/', b'?', b'a', b, b'b']) {
            assert!(
                target
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '<' | '>')),
                "{b:#x}: {target}"
            );
        }
    }
}
