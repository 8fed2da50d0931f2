use std::collections::HashMap;

use super::*;

fn spec(yaml: &str) -> config::Upstream {
    let text =
        format!("listeners: [ {{ name: p, address: 127.0.0.1:1 }} ]\nupstreams:\n  u: {yaml}\n");
    let valid = config::load_from_str(&text, std::path::Path::new("t.yaml"), &|_| None).unwrap();
    valid.config.upstreams["u"].clone()
}

fn addrs(n: u16) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| format!("'127.0.0.1:{}'", 9000 + i))
        .collect();
    format!("[{}]", list.join(", "))
}

#[test]
fn round_robin_visits_every_target_in_turn() {
    let pool = Pool::new("u", &spec(&format!("{{ targets: {} }}", addrs(3))));
    let picks: Vec<u16> = (0..6)
        .map(|_| {
            pool.select(HashKey::None, None)
                .unwrap()
                .target()
                .addr
                .port()
        })
        .collect();
    assert_eq!(
        picks[..3]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    assert_eq!(picks[..3], picks[3..]);
}

#[test]
fn least_requests_prefers_idle_targets() {
    let pool = Pool::new(
        "u",
        &spec(&format!(
            "{{ targets: {}, load_balancing: least_requests }}",
            addrs(3)
        )),
    );
    // Hold two requests on whatever targets come first.
    let a = pool.select(HashKey::None, None).unwrap();
    let b = pool.select(HashKey::None, None).unwrap();
    assert_ne!(a.target().addr, b.target().addr);
    let c = pool.select(HashKey::None, None).unwrap();
    assert_ne!(c.target().addr, a.target().addr);
    assert_ne!(c.target().addr, b.target().addr);
    drop(a);
    // The released target is now the least loaded.
    let released = pool
        .targets()
        .iter()
        .find(|t| t.in_flight() == 0)
        .unwrap()
        .addr;
    assert_eq!(
        pool.select(HashKey::None, None).unwrap().target().addr,
        released
    );
}

#[test]
fn consistent_hash_is_sticky_and_moves_few_keys() {
    let pool = Pool::new(
        "u",
        &spec(&format!(
            "{{ targets: {}, load_balancing: consistent_hash }}",
            addrs(5)
        )),
    );
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let before: HashMap<&str, SocketAddr> = keys
        .iter()
        .map(|k| {
            let t = pool.select(HashKey::Bytes(k.as_bytes()), None).unwrap();
            (k.as_str(), t.target().addr)
        })
        .collect();
    for k in &keys {
        let again = pool.select(HashKey::Bytes(k.as_bytes()), None).unwrap();
        assert_eq!(again.target().addr, before[k.as_str()]);
    }
    // Eject one target: only its keys move.
    let gone = pool.targets()[0].clone();
    gone.ejected_until_ms.store(u64::MAX, Ordering::Relaxed);
    let mut moved = 0;
    for k in &keys {
        let now = pool
            .select(HashKey::Bytes(k.as_bytes()), None)
            .unwrap()
            .target()
            .addr;
        if now != before[k.as_str()] {
            moved += 1;
            assert_eq!(before[k.as_str()], gone.addr);
        }
    }
    let share = keys
        .iter()
        .filter(|k| before[k.as_str()] == gone.addr)
        .count();
    assert_eq!(moved, share);
    assert!(share > 100 && share < 300, "uneven spread: {share}");
}

#[test]
fn passive_ejection_and_avoiding_the_failed_target() {
    let pool = Pool::new(
        "u",
        &spec(&format!(
            "{{ targets: {}, passive_health: {{ max_failures: 2, ejection_time: 1h }} }}",
            addrs(2)
        )),
    );
    let first = pool.targets()[0].clone();
    // Retrying avoids the target that just failed.
    for _ in 0..4 {
        let pick = pool.select(HashKey::None, Some(first.addr)).unwrap();
        assert_ne!(pick.target().addr, first.addr);
    }
    pool.report(&first, false);
    assert!(pool.is_available(&first));
    pool.report(&first, false);
    assert!(!pool.is_available(&first));
    for _ in 0..4 {
        assert_ne!(
            pool.select(HashKey::None, None).unwrap().target().addr,
            first.addr
        );
    }
    // With every target out, there is nothing to pick.
    let second = pool.targets()[1].clone();
    pool.report(&second, false);
    pool.report(&second, false);
    assert_eq!(
        pool.select(HashKey::None, None).unwrap_err(),
        SelectError::NoHealthyTarget
    );
}

#[test]
fn retry_budget_caps_retries() {
    let pool = Pool::new(
        "u",
        &spec(&format!(
            "{{ targets: {}, retries: {{ budget_percent: 10 }} }}",
            addrs(1)
        )),
    );
    for _ in 0..1000 {
        pool.count_request();
    }
    let allowed = (0..500).filter(|_| pool.try_retry()).count();
    assert_eq!(allowed, 100);
}

#[test]
fn registry_keeps_unchanged_pools() {
    let registry = PoolRegistry::default();
    let a = spec(&format!("{{ targets: {} }}", addrs(2)));
    let (first, created) = registry.get_or_create("u", &a);
    assert!(created);
    let (same, created) = registry.get_or_create("u", &a);
    assert!(!created);
    assert!(Arc::ptr_eq(&first, &same));
    let b = spec(&format!("{{ targets: {} }}", addrs(3)));
    let (changed, created) = registry.get_or_create("u", &b);
    assert!(created);
    assert!(!Arc::ptr_eq(&first, &changed));
}

#[test]
fn pool_bulkhead_refuses_over_max_concurrent() {
    let pool = Pool::new(
        "u",
        &spec(&format!("{{ targets: {}, max_concurrent: 2 }}", addrs(2))),
    );
    let a = pool.select(HashKey::None, None).unwrap();
    let _b = pool.select(HashKey::None, None).unwrap();
    assert_eq!(
        pool.select(HashKey::None, None).unwrap_err(),
        SelectError::Saturated
    );
    drop(a);
    assert!(pool.select(HashKey::None, None).is_ok());
}

#[test]
fn failure_ratio_opens_the_breaker() {
    let pool = Pool::new(
        "u",
        &spec(&format!(
            "{{ targets: {}, passive_health: {{ max_failures: 0, failure_ratio: 0.5, min_requests: 10, ejection_time: 1h }} }}",
            addrs(2)
        )),
    );
    let target = pool.targets()[0].clone();
    // Alternating success and failure: never 5 in a row, but half failed.
    for i in 0..9 {
        pool.report(&target, i % 2 == 0);
        assert_eq!(
            pool.breaker(&target),
            BreakerState::Closed,
            "after {} outcomes",
            i + 1
        );
    }
    pool.report(&target, false);
    assert_eq!(pool.breaker(&target), BreakerState::Open);
}
