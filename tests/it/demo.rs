//! `portcullis demo`: the gateway and the SSO together, as a newcomer runs
//! them — tokens from the SSO through the gateway, a protected route, the
//! portal with both APIs.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{answers_ok, client, eventually, free_port, get_json, ChildGuard, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_gateway_and_sso_together() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin, sso) = (free_port(), free_port(), free_port());
    let stdout_path = dir.path().join("demo.out");
    let child = Command::new(BIN)
        .args(["demo", "--port", &port.to_string()])
        .args([
            "--admin-port",
            &admin.to_string(),
            "--sso-port",
            &sso.to_string(),
        ])
        .arg("--dir")
        .arg(dir.path().join("run"))
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("demo.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let base = format!("http://127.0.0.1:{port}");
    let up = answers_ok(&format!("{base}/healthz"), Duration::from_secs(20)).await;
    assert!(
        up,
        "{}",
        std::fs::read_to_string(dir.path().join("demo.err")).unwrap_or_default()
    );
    let printed = std::fs::read_to_string(&stdout_path).unwrap();
    let secret = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("service client   demo-service / "))
        .expect("the service client's secret is printed")
        .trim()
        .to_owned();

    // A token from the SSO, through the gateway; the protected route.
    let token: Value = client()
        .post(format!("{base}/sso/token"))
        .basic_auth("demo-service", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = token["access_token"].as_str().expect("a token");
    let anonymous = client()
        .get(format!("{base}/api/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let authorized = client()
        .get(format!("{base}/api/healthz"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status(), 200);

    // The portal shows the gateway's admin API and the SSO's.
    let both = eventually(Duration::from_secs(10), || async {
        let doc = get_json(&format!("{base}/openapi.json")).await;
        doc.pointer("/paths/~1sso~1token/post").is_some()
            && doc.pointer("/paths/~1gateway~1reload/post").is_some()
    })
    .await;
    assert!(
        both,
        "{}",
        get_json(&format!("{base}/docs/status.json")).await
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exited = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}
