use super::*;

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
