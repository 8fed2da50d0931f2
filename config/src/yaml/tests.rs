use super::*;

#[test]
fn positions_are_one_based_and_point_at_keys() {
    let node = parse("a: 1\nb:\n  - x: true\n    y: 'q'\n").unwrap();
    let mut spans = HashMap::new();
    let mut keys = HashMap::new();
    node.index_spans(&KeyPath::default(), &mut spans, &mut keys);
    let b0y = KeyPath::default()
        .child_key("b")
        .child_index(0)
        .child_key("y");
    assert_eq!(spans[&b0y], Span { line: 4, column: 8 });
    assert_eq!(
        keys[&KeyPath::default().child_key("b")],
        Span { line: 2, column: 1 }
    );
    assert_eq!(b0y.to_string(), "b[0].y");
}

#[test]
fn plain_scalars_are_typed_and_quoted_stay_strings() {
    let node = parse("a: 42\nb: '42'\nc: 1.5\nd: yes\ne: ~\n").unwrap();
    assert_eq!(
        node.to_json(),
        serde_json::json!({"a": 42, "b": "42", "c": 1.5, "d": "yes", "e": null})
    );
}

#[test]
fn duplicate_keys_are_syntax_errors() {
    let err = parse("a: 1\na: 2\n").unwrap_err();
    assert_eq!(err.span.line, 2);
    assert!(err.message.contains("duplicate key `a`"));
}

#[test]
fn env_references_are_replaced_or_reported() {
    let mut node = parse("a: \"x-${SECRET}-y\"\nb: ${MISSING}\nc: ${MISSING:-dflt}\n").unwrap();
    let mut errors = Vec::new();
    let lookup = |name: &str| (name == "SECRET").then(|| "s3".to_owned());
    node.interpolate_env(&lookup, &mut errors);
    assert_eq!(node.to_json()["a"], "x-s3-y");
    assert_eq!(node.to_json()["c"], "dflt");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0.line, 2);
}

#[test]
fn removal_keeps_original_indices() {
    let mut node = parse("l: [a, b, c]\n").unwrap();
    let l1 = KeyPath::default().child_key("l").child_index(1);
    assert!(node.remove(&l1));
    let current = [PathSegment::Key("l".into()), PathSegment::Index(1)];
    let original = node.original_path(&current).unwrap();
    assert_eq!(original.to_string(), "l[2]");
}
