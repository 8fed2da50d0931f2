//! The identity directory: what people create survives restarts — with the
//! default config (SQLite in a file) and on a real PostgreSQL shared by two
//! SSO replicas.

use crate::sso::{
    allow_consent, authorize_url, code_from, config, hidden, pkce, register, write_users, Browser,
    SsoProcess,
};
use crate::support::{free_port, PostgresServer};

const CAROL: [(&str, &str); 3] = [
    ("username", "carol"),
    ("password", "carol-password-1"),
    ("confirm", "carol-password-1"),
];

/// Carol registers from web-ui's authorization request (the SSO at
/// `base`) and consents: a code comes back.
async fn carol_registers_and_consents(base: &str) {
    let browser = Browser::default();
    let (_, challenge) = pkce();
    let login_page = browser.get(&authorize_url(base, &challenge)).await;
    let html = login_page.text().await.unwrap();
    let request = hidden(&html, "request");
    let created = register(&browser, base, &request, &CAROL).await;
    assert_eq!(created.status(), 200, "the consent page follows");
    let html = created.text().await.unwrap();
    assert!(html.contains("name=\"decision\""), "{html}");
    code_from(&allow_consent(&browser, base, &html).await);
}

/// Carol signs in at `base` with a new browser: a code at once, without
/// the consent page (it was remembered).
async fn carol_signs_in_without_consent(base: &str) {
    let browser = Browser::default();
    let (_, challenge) = pkce();
    let form = browser.get(&authorize_url(base, &challenge)).await;
    assert_eq!(form.status(), 200);
    let html = form.text().await.unwrap();
    let answer = browser
        .post(
            &format!("{base}/login"),
            &[
                ("request", &hidden(&html, "request")),
                ("csrf", &hidden(&html, "csrf")),
                ("username", CAROL[0].1),
                ("password", CAROL[1].1),
            ],
        )
        .await;
    code_from(&answer);
}

fn open_registration(extra: &str) -> String {
    config().replace(
        "users: { file: users.yaml }",
        "users: { file: users.yaml, registration: open }",
    ) + extra
}

/// The default config keeps users and consents in SQLite next to the
/// config: a restart forgets neither (acceptance 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_users_and_consents_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let config = open_registration("");
    let sso = SsoProcess::start(dir.path(), &config, port).await;
    carol_registers_and_consents(&sso.issuer()).await;
    drop(sso);
    assert!(dir.path().join("directory.db").exists());

    let sso = SsoProcess::start(dir.path(), &config, port).await;
    carol_signs_in_without_consent(&sso.issuer()).await;
    // A user of the users file and of the directory at once is refused.
    drop(sso);
    let users = std::fs::read_to_string(dir.path().join("users.yaml")).unwrap();
    let carol_hash = crate::sso::hash("x-password-long");
    std::fs::write(
        dir.path().join("users.yaml"),
        format!("{users}  - username: carol\n    password_hash: '{carol_hash}'\n"),
    )
    .unwrap();
    let path = dir.path().join("conflict.yaml");
    std::fs::write(&path, config.replace("{PORT}", &free_port().to_string())).unwrap();
    let stderr = sso_refuses_to_start(&path);
    // Where: the file, line and column of carol's name, and the key.
    let line = users.lines().count() + 1;
    assert!(
        stderr.contains(&format!(
            "users.yaml:{line}:15: users[2].username: `carol` is also a user in the directory"
        )),
        "{stderr}"
    );
}

/// `portcullis sso -c path` exits 1 at start: what it said.
fn sso_refuses_to_start(path: &std::path::Path) -> String {
    let output = std::process::Command::new(crate::support::BIN)
        .args(["sso", "-c"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Two replicas on one PostgreSQL (migrating at once on start): a user
/// registered and a consent given on one are known to the other, and to
/// both after a restart (acceptance 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_directory_on_postgresql() {
    let postgres = PostgresServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let (port_a, port_b) = (free_port(), free_port());
    let config = open_registration(&format!("directory: {{ url: '{}' }}\n", postgres.url()));
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&dir_a, &dir_b] {
        std::fs::create_dir_all(d).unwrap();
        write_users(d);
    }
    let (a, b) = tokio::join!(
        SsoProcess::start(&dir_a, &config, port_a),
        SsoProcess::start(&dir_b, &config, port_b)
    );
    carol_registers_and_consents(&a.issuer()).await;
    carol_signs_in_without_consent(&b.issuer()).await;
    drop((a, b));
    assert!(!dir_a.join("directory.db").exists(), "nothing in SQLite");

    let b = SsoProcess::start(&dir_b, &config, port_b).await;
    carol_signs_in_without_consent(&b.issuer()).await;
    let rows = std::process::Command::new("psql")
        .args([
            postgres.url().as_str(),
            "-qAtc",
            "SELECT username FROM users ORDER BY username",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "carol");
}

/// `portcullis sso migrate`: creates the schema (again: nothing to do),
/// 1 with the cause when the database cannot be reached, 2 for a URL that
/// is not PostgreSQL's.
#[test]
fn sso_migrate_creates_the_schema_and_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let run = |extra: &str| {
        let path = dir.path().join("sso.yaml");
        std::fs::write(&path, config().replace("{PORT}", "1") + extra).unwrap();
        let output = std::process::Command::new(crate::support::BIN)
            .args(["sso", "migrate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    for _ in 0..2 {
        let (code, out) = run("");
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("the directory's schema is current"), "{out}");
    }
    assert!(dir.path().join("directory.db").exists());
    let closed = free_port();
    let (code, out) = run(&format!(
        "directory: {{ url: 'postgres://nobody@127.0.0.1:{closed}/x', timeout: 2s }}\n"
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("portcullis sso migrate: directory:"), "{out}");
    let (code, out) = run("directory: { url: 'mysql://127.0.0.1/x' }\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("directory.url: must be a `postgres://` URL"),
        "{out}"
    );
}

/// `portcullis sso admin user …` with `input` on stdin: exit code and output.
fn sso_admin(config: &std::path::Path, args: &[&str], input: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(crate::support::BIN)
        .args(["sso", "admin", "-c"])
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// The first admin of an empty directory comes from the command line, and
/// can then use the admin API; the CLI manages users with documented exit
/// codes (issue 13, acceptance 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_bootstraps_the_first_admin_and_manages_users() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let path = dir.path().join("admin.yaml");
    std::fs::write(&path, config().replace("{PORT}", &port.to_string())).unwrap();
    let add = [
        "user",
        "add",
        "root",
        "--role",
        "sso-admin",
        "--email",
        "root@example.com",
    ];
    let (code, out) = sso_admin(&path, &add, "root-password-1\n");
    assert_eq!((code, out.trim()), (Some(0), "root: created"));
    for (args, input, want_code, says) in [
        (&add[..], "root-password-1\n", 3, "`root` is taken"),
        (
            &["user", "add", "alice"][..],
            "alice-password-2\n",
            3,
            "in the users file",
        ),
        (
            &["user", "add", "shorty"][..],
            "short\n",
            3,
            "at least 12 characters",
        ),
        (
            &["user", "add", "empty"][..],
            "\n",
            2,
            "give the secret on stdin",
        ),
        (
            &["user", "disable", "nobody"][..],
            "",
            3,
            "no user `nobody`",
        ),
        (
            &["user", "disable", "alice"][..],
            "",
            3,
            "in the users file",
        ),
        (
            &["user", "frobnicate"][..],
            "",
            2,
            "unrecognized subcommand",
        ),
    ] {
        let (code, out) = sso_admin(&path, args, input);
        assert_eq!(code, Some(want_code), "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
    let (code, out) = sso_admin(&path, &["user", "list"], "");
    assert_eq!(code, Some(0));
    assert!(
        out.contains("root\troot@example.com\tsso-admin\tfalse"),
        "{out}"
    );

    // A client registered from the command line: its secret printed once.
    let (code, out) = sso_admin(
        &path,
        &[
            "client",
            "add",
            "cli-app",
            "--type",
            "confidential",
            "--redirect-uri",
            "http://127.0.0.1:1/cb",
        ],
        "",
    );
    assert_eq!(code, Some(0), "{out}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .expect("the secret is printed")
        .to_owned();
    for (args, want_code, says) in [
        (
            &[
                "client",
                "add",
                "cli-app",
                "--type",
                "public",
                "--redirect-uri",
                "http://127.0.0.1:1/cb",
            ][..],
            3,
            "`cli-app` is taken",
        ),
        (
            &[
                "client",
                "add",
                "billing",
                "--type",
                "public",
                "--redirect-uri",
                "http://127.0.0.1:1/cb",
            ][..],
            3,
            "in the config file",
        ),
        (
            &[
                "client",
                "add",
                "bad-uri",
                "--type",
                "public",
                "--redirect-uri",
                "relative",
            ][..],
            3,
            "redirect_uris",
        ),
        (
            &["client", "add", "typo", "--type", "secret"][..],
            2,
            "invalid value",
        ),
        (
            &["client", "rotate", "nope"][..],
            3,
            "no run-time client `nope`",
        ),
    ] {
        let (code, out) = sso_admin(&path, args, "");
        assert_eq!(code, Some(want_code), "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
    let (_, listed) = sso_admin(&path, &["client", "list"], "");
    assert!(
        listed.contains("cli-app\tconfidential\thttp://127.0.0.1:1/cb"),
        "{listed}"
    );

    // The bootstrapped admin signs in and uses the admin API; the client's
    // printed secret authenticates it.
    let sso = SsoProcess::start(dir.path(), &config(), port).await;
    let introspected = crate::support::client()
        .post(sso.url("/introspect"))
        .basic_auth("cli-app", Some(&secret))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(introspected.status(), 200);
    let tokens =
        crate::signin::web_ui_tokens_for(&sso, "root", "root-password-1", "openid profile").await;
    let listed = crate::support::client()
        .get(sso.url("/admin/users"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    drop(sso);

    // A client of the config file with a run-time client's id stops the
    // start, naming the place in the file.
    let original = std::fs::read_to_string(&path).unwrap();
    let conflicting = original.replacen(
        "clients:\n",
        "clients:\n  - client_id: cli-app\n    type: public\n    redirect_uris: ['http://127.0.0.1:1/cb']\n",
        1,
    );
    let line = original.lines().position(|l| l == "clients:").unwrap() + 2;
    std::fs::write(&path, conflicting).unwrap();
    let stderr = sso_refuses_to_start(&path);
    assert!(
        stderr.contains(&format!(
            "admin.yaml:{line}:16: clients[0].client_id: `cli-app` is also a client in the directory"
        )),
        "{stderr}"
    );
    std::fs::write(&path, original).unwrap();

    let (code, rotated) = sso_admin(&path, &["client", "rotate", "cli-app"], "");
    assert_eq!(code, Some(0), "{rotated}");
    assert!(rotated.starts_with("cli-app: secret rotated\nclient_secret: "));
    assert!(!rotated.contains(&secret), "a new secret");
    for (args, input, says) in [
        (&["user", "disable", "root"][..], "", "root: disabled"),
        (&["user", "enable", "root"][..], "", "root: enabled"),
        (
            &["user", "passwd", "root"][..],
            "another-password-3\n",
            "root: password set",
        ),
        (
            &["user", "passwd", "root", "--temporary"][..],
            "temporary-password-4\n",
            "root: password set",
        ),
        (&["user", "delete", "root"][..], "", "root: deleted"),
        (&["client", "delete", "cli-app"][..], "", "cli-app: deleted"),
    ] {
        let (code, out) = sso_admin(&path, args, input);
        assert_eq!((code, out.trim()), (Some(0), says), "{args:?}");
    }
    let (_, out) = sso_admin(&path, &["user", "list"], "");
    assert_eq!(out.trim(), "username\temail\troles\tdisabled");
    std::fs::write(&path, "issuer: nope\n").unwrap();
    assert_eq!(sso_admin(&path, &["user", "list"], "").0, Some(2));
}

/// The admin API's answer to `boss` signed in with `password`.
async fn admin_api_for_boss(sso: &SsoProcess, password: &str) -> u16 {
    let tokens = crate::signin::web_ui_tokens_for(sso, "boss", password, "openid profile").await;
    crate::support::client()
        .get(sso.url("/admin/users"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The first admin from the environment: created on the first start,
/// left alone on the next (whatever the variables say then); an unusable
/// password stops the start with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let env = [
        ("PORTCULLIS_SSO_BOOTSTRAP_ADMIN", "boss"),
        ("PORTCULLIS_SSO_BOOTSTRAP_PASSWORD", "boss-password-1"),
    ];

    let sso = SsoProcess::start_with_env(dir.path(), &config(), port, &env).await;
    assert_eq!(admin_api_for_boss(&sso, "boss-password-1").await, 200);
    drop(sso);
    let changed = [
        ("PORTCULLIS_SSO_BOOTSTRAP_ADMIN", "boss"),
        ("PORTCULLIS_SSO_BOOTSTRAP_PASSWORD", "another-password-2"),
    ];
    let sso = SsoProcess::start_with_env(dir.path(), &config(), port, &changed).await;
    assert_eq!(
        admin_api_for_boss(&sso, "boss-password-1").await,
        200,
        "left as it was"
    );
    drop(sso);

    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, config().replace("{PORT}", &free_port().to_string())).unwrap();
    let output = std::process::Command::new(crate::support::BIN)
        .args(["sso", "-c"])
        .arg(&path)
        .env("PORTCULLIS_SSO_BOOTSTRAP_ADMIN", "chief")
        .env("PORTCULLIS_SSO_BOOTSTRAP_PASSWORD", "short")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("needs PORTCULLIS_SSO_BOOTSTRAP_PASSWORD_HASH"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
