use std::process::Command;

use crate::support::BIN;

#[test]
fn check_reports_three_mistakes_with_positions_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "\
listeners:
  - { name: plain, address: 127.0.0.1:8080 }
upstreams:
  orders:
    targets: [127.0.0.1:9000]
    health_check: { path: /healthz, interval: 5 seconds please }
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream: orderz
    strip_prefx: true
",
    )
    .unwrap();
    let (code, stderr) = crate::support::run_check(&path);
    assert_eq!(code, Some(2));
    let file = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}:6:47: upstreams.orders.health_check.interval: invalid duration"
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{file}:10:15: routes[0].upstream: unknown upstream `orderz`"
        )),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!("{file}:11:5: routes[0].strip_prefx: unknown key")),
        "{stderr}"
    );
}

#[test]
fn example_configs_pass_check() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "sso-users.yaml" {
                continue; // read through sso.yaml
            }
            // The SSO's example takes its hashes from the environment.
            let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
            let args: &[&str] = if name == "sso.yaml" {
                &["sso", "check"]
            } else {
                &["check"]
            };
            let output = Command::new(BIN)
                .args(args)
                .arg("-c")
                .arg(&path)
                .env("BILLING_SECRET_HASH", hash)
                .env("ALICE_PASSWORD_HASH", hash)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "gateway and SSO examples");
}

#[test]
fn exit_codes_for_arguments_version_and_schema() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("portcullis "));
    let output = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(BIN)
        .args(["check", "-c", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(BIN).arg("schema").output().unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(schema["properties"]["listeners"].is_object());
    assert!(schema["properties"]["portal"].is_object());
    let output = Command::new(BIN).args(["sso", "schema"]).output().unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(schema["properties"]["issuer"].is_object());
    assert!(schema["properties"]["clients"].is_object());
}

/// Browser login without `public_url`, or with a path or a slash in it,
/// is refused by `check`: the redirect URI is never built from a Host.
#[test]
fn check_requires_an_origin_as_the_login_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let base = "\
listeners:
  - { name: plain, address: 127.0.0.1:8080 }
identity:
  providers:
    - { name: sso, issuer: 'https://sso.example.com', audiences: [api] }
  login:
    provider: sso
    client_id: gateway
";
    for (extra, want) in [
        ("", "identity.login.public_url: required"),
        (
            "    public_url: https://api.example.com/app\n",
            "identity.login.public_url: must be an origin",
        ),
        (
            "    public_url: api.example.com\n",
            "identity.login.public_url: must be an origin",
        ),
    ] {
        let path = dir.path().join("login.yaml");
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let (code, stderr) = crate::support::run_check(&path);
        assert_eq!(code, Some(2), "{extra}: {stderr}");
        assert!(
            stderr.contains(&format!("{}:", path.display())) && stderr.contains(want),
            "{extra}: {stderr}"
        );
    }
    let path = dir.path().join("good.yaml");
    std::fs::write(
        &path,
        format!("{base}    public_url: 'https://api.example.com'\n"),
    )
    .unwrap();
    assert_eq!(crate::support::run_check(&path).0, Some(0));
}
