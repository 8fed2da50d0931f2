//! `portcullis demo`: the gateway and the SSO together on loopback, from
//! configs written to a fresh directory and loaded like any other (so the
//! demo runs exactly the code production runs). Credentials are generated
//! at start and printed; nothing is stored outside that directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

pub struct Ports {
    pub gateway: u16,
    pub admin: u16,
    pub sso: u16,
}

/// Random URL-safe text (credentials of this run only).
fn random_text(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf
        .iter()
        .map(|b| {
            const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
            ALPHABET[usize::from(*b) % ALPHABET.len()] as char
        })
        .collect())
}

fn sso_config(ports: &Ports, service_hash: &str, gateway_hash: &str) -> String {
    format!(
        "# Written by `portcullis demo`.
issuer: http://localhost:{gateway}/sso
listen: 127.0.0.1:{sso}
keys: {{ dir: keys }}
users: {{ file: users.yaml, registration: open }}
session: {{ secure_cookies: false }}
trusted_proxies: [127.0.0.1/32]
branding: {{ title: Portcullis demo }}
# The demo user (role `admin`) may use the console and the admin API.
admin: {{ role: admin }}
clients:
  - client_id: demo-ui
    name: Demo UI
    type: public
    first_party: true
    redirect_uris: [ 'http://localhost:{gateway}/callback' ]
    post_logout_redirect_uris: [ 'http://localhost:{gateway}/' ]
  - client_id: demo-service
    type: confidential
    secret_hash: '{service_hash}'
    audience: [ demo-api ]
    roles: [ demo ]
  - client_id: demo-gateway
    name: Portcullis demo gateway
    type: confidential
    first_party: true
    secret_hash: '{gateway_hash}'
    grant_types: [ authorization_code, refresh_token ]
    redirect_uris: [ 'http://localhost:{gateway}/_auth/callback' ]
    post_logout_redirect_uris: [ 'http://localhost:{gateway}/docs/' ]
    backchannel_logout_uri: 'http://localhost:{gateway}/_auth/backchannel-logout'
    audience: [ demo-api ]
",
        gateway = ports.gateway,
        sso = ports.sso,
    )
}

fn users_file(user_hash: &str) -> String {
    format!(
        "users:
  - username: demo
    password_hash: '{user_hash}'
    name: Demo User
    email: demo@example.com
    # `admin` opens the gateway's own API (/gateway/…); self-registered
    # users get no role at all.
    roles: [ demo, admin ]
"
    )
}

fn gateway_config(ports: &Ports, gateway_secret: &str) -> String {
    format!(
        "# Written by `portcullis demo`.
listeners:
  - {{ name: plain, address: '127.0.0.1:{gateway}' }}
admin: {{ address: '127.0.0.1:{admin}' }}
portal: {{ enabled: true, title: Portcullis demo, refresh_interval: 10s }}
identity:
  providers:
    - {{ name: sso, issuer: 'http://localhost:{gateway}/sso', jwks_uri: 'http://127.0.0.1:{sso}/sso/jwks', audiences: [ demo-api, demo-ui ] }}
  login:
    provider: sso
    client_id: demo-gateway
    client_secret: '{gateway_secret}'
    scopes: [ openid, profile ]
    public_url: 'http://localhost:{gateway}'
    post_logout_path: /docs/
    secure_cookies: false
upstreams:
  admin: {{ targets: [ '127.0.0.1:{admin}' ], health_check: {{ path: /healthz, interval: 5s }} }}
  sso: {{ targets: [ '127.0.0.1:{sso}' ] }}
routes:
  - {{ name: health, match: {{ path: /healthz, methods: [ GET ] }}, upstream: admin }}
  - name: gateway-admin
    match: {{ path_prefix: /gateway }}
    upstream: admin
    strip_prefix: true
    openapi: /openapi.json
    auth: {{ mode: required, roles_any: [ admin ], login_redirect: true }}
  - {{ name: sso, match: {{ path_prefix: /sso }}, upstream: sso, openapi: /sso/openapi.json }}
  - name: api
    match: {{ path_prefix: /api }}
    upstream: admin
    strip_prefix: true
    auth: {{ mode: required, roles_any: [ demo ], login_redirect: true }}
",
        gateway = ports.gateway,
        admin = ports.admin,
        sso = ports.sso,
    )
}

/// Writes the configs, starts the SSO on a thread of its own and the
/// gateway on this one; returns when the gateway stops.
pub fn run(dir: Option<PathBuf>, ports: &Ports) -> anyhow::Result<()> {
    let dir = match dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let password = random_text(16)?;
    let secret = random_text(32)?;
    let gateway_secret = random_text(32)?;
    let hash = |s: &str| portcullis_sso::hash_secret(s).map_err(anyhow::Error::msg);
    write(&dir.join("users.yaml"), &users_file(&hash(&password)?))?;
    let sso_path = dir.join("sso.yaml");
    write(
        &sso_path,
        &sso_config(ports, &hash(&secret)?, &hash(&gateway_secret)?),
    )?;
    let gateway_path = dir.join("gateway.yaml");
    write(&gateway_path, &gateway_config(ports, &gateway_secret))?;

    let sso = portcullis_config::load_sso(&sso_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gateway = portcullis_config::load(&gateway_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sso_thread = std::thread::Builder::new()
        .name("portcullis-sso".into())
        .spawn(move || {
            if let Err(e) = portcullis_sso::run(sso, &sso_path) {
                log::error!("sso: {e}");
                std::process::exit(1);
            }
        })?;
    wait_for_port(ports.sso, Duration::from_secs(10)).context("the SSO did not start")?;

    let g = ports.gateway;
    println!(
        "Portcullis demo (configs in {dir})
  docs portal      http://localhost:{g}/docs/
  sign in (browser) http://localhost:{g}/api/healthz   (then the portal shows what you may call;
                   sign out: http://localhost:{g}/_auth/logout)
  merged OpenAPI   http://localhost:{g}/openapi.json
  SSO discovery    http://localhost:{g}/sso/.well-known/openid-configuration
  your account     http://localhost:{g}/sso/account   (password, authenticator app, passkeys, sessions)
  admin console    http://localhost:{g}/sso/console   (users, roles, clients, audit; the demo user is an admin)
  user             demo / {password}   (login page: any authorization request; /sso/register to sign up)
  service client   demo-service / {secret}

  TOKEN=$(curl -s -u demo-service:{secret} -d grant_type=client_credentials \\
      http://localhost:{g}/sso/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')
  curl -i http://localhost:{g}/api/healthz                               # 401
  curl -i -H \"Authorization: Bearer $TOKEN\" http://localhost:{g}/api/healthz   # 200
",
        dir = dir.display()
    );
    let result = portcullis_gateway::run(gateway).map_err(anyhow::Error::from);
    drop(sso_thread);
    result
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// Before the gateway's runtime starts: a plain thread may sleep.
#[allow(clippy::disallowed_methods)]
fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("nothing listens on 127.0.0.1:{port} after {limit:?}")
}
