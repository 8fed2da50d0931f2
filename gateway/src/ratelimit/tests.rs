use super::*;

#[test]
fn client_ip_behind_trusted_proxies() {
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.1.1.1"),
    );
    let peer: IpAddr = "10.0.0.2".parse().unwrap();
    // The rightmost address that is not a trusted proxy.
    assert_eq!(
        client_ip(Some(peer), &headers, &trusted),
        Some("198.51.100.7".parse().unwrap())
    );
    // An untrusted peer's header is ignored.
    let stranger: IpAddr = "192.0.2.1".parse().unwrap();
    assert_eq!(
        client_ip(Some(stranger), &headers, &trusted),
        Some(stranger)
    );
}

#[test]
fn local_gcra_allows_burst_then_rate() {
    let registry = LimiterRegistry::default();
    let local = registry.local("t".into(), 10, Duration::from_secs(1), 3);
    let allowed = (0..10)
        .filter(|_| local_decision(&local, 7).allowed)
        .count();
    assert_eq!(allowed, 3, "burst of 3");
    let refused = local_decision(&local, 7);
    assert!(!refused.allowed);
    assert!(refused.retry_after <= Duration::from_millis(100));
    // Another key has its own bucket.
    assert!(local_decision(&local, 8).allowed);
}

#[test]
fn policy_names_are_tame() {
    assert_eq!(
        sanitise_name("header:x-tenant+user"),
        "header:x-tenant+user"
    );
    assert_eq!(sanitise_name("a\"b c"), "a_b_c");
}
