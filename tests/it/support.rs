//! Test support: the real `portcullis` binary as a child process, and real
//! HTTP backends on loopback.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A loopback port that was free a moment ago. The gateway binds it itself,
/// so it is released here; tests that race for ports retry on bind failure.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running gateway process, killed on drop.
pub struct Gateway {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin: u16,
    pub config_path: PathBuf,
}

impl Gateway {
    /// Writes `config` (with `{PORT}`, `{ADMIN}` and `{DIR}` filled in) and
    /// starts the gateway on it, waiting until `/readyz` answers 200.
    pub async fn start(config: &str) -> Gateway {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        let port = free_port();
        let admin = free_port();
        let text = config
            .replace("{PORT}", &port.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{DIR}", &dir.path().display().to_string());
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, text).expect("write config");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("log file");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let child = Command::new(BIN)
            .args(["gateway", "-c"])
            .arg(&config_path)
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start portcullis");
        let mut gateway = Gateway {
            child: Some(child),
            dir,
            port,
            admin,
            config_path,
        };
        let ready = eventually(Duration::from_secs(20), || async {
            admin_get(admin, "/readyz").await.map(|(s, _)| s) == Some(200)
        })
        .await;
        if !ready {
            let status = gateway
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "gateway did not become ready (exit: {status:?})\nstderr:\n{}",
                gateway.stderr()
            );
        }
        gateway
    }

    /// Replaces the config file, filling in the same placeholders.
    pub fn write_config(&self, config: &str) {
        let text = config
            .replace("{PORT}", &self.port.to_string())
            .replace("{ADMIN}", &self.admin.to_string())
            .replace("{DIR}", &self.dir.path().display().to_string());
        write_atomic(&self.config_path, text.as_bytes());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return status.code();
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET on the admin listener: status and body.
pub async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let client = client();
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// What a backend saw.
#[derive(Debug, serde::Deserialize)]
pub struct Echo {
    pub backend: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

/// A real HTTP/1.1 + HTTP/2 backend on loopback that echoes what it got.
pub struct Backend {
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    /// When not 0, every request (but `/healthz`) is answered with it.
    pub fail_status: Arc<AtomicU16>,
    /// When set, `GET /openapi.json` answers it, with an ETag and 304 for
    /// a matching `If-None-Match`.
    pub openapi: Arc<Mutex<Option<String>>>,
    /// `/openapi.json` requests, and those answered 304.
    pub openapi_fetches: Arc<AtomicUsize>,
    pub openapi_not_modified: Arc<AtomicUsize>,
    /// `METHOD path?query` of every request served (health checks aside).
    pub seen: Arc<Mutex<Vec<String>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().expect("addr");
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let fail_status = Arc::new(AtomicU16::new(0));
        let openapi: Arc<Mutex<Option<String>>> = Arc::default();
        let openapi_fetches: Arc<AtomicUsize> = Arc::default();
        let openapi_not_modified: Arc<AtomicUsize> = Arc::default();
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let state = Arc::new(BackendState {
            seen: seen.clone(),
            name: name.to_owned(),
            healthy: healthy.clone(),
            hits: hits.clone(),
            fail_status: fail_status.clone(),
            openapi: openapi.clone(),
            openapi_fetches: openapi_fetches.clone(),
            openapi_not_modified: openapi_not_modified.clone(),
        });
        let conn_tasks = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let task = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { state.handle(req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
                conn_tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Backend {
            addr,
            healthy,
            hits,
            fail_status,
            openapi,
            openapi_fetches,
            openapi_not_modified,
            seen,
            tasks,
        }
    }

    /// Stops listening and drops every open connection.
    pub fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

struct BackendState {
    seen: Arc<Mutex<Vec<String>>>,
    name: String,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    fail_status: Arc<AtomicU16>,
    openapi: Arc<Mutex<Option<String>>>,
    openapi_fetches: Arc<AtomicUsize>,
    openapi_not_modified: Arc<AtomicUsize>,
}

impl BackendState {
    fn openapi(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let spec = self.openapi.lock().unwrap().clone()?;
        self.openapi_fetches.fetch_add(1, Ordering::SeqCst);
        let etag = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            spec.hash(&mut hasher);
            format!("\"{:x}\"", hasher.finish())
        };
        let status =
            if req.headers().get("if-none-match").map(|v| v.as_bytes()) == Some(etag.as_bytes()) {
                self.openapi_not_modified.fetch_add(1, Ordering::SeqCst);
                304
            } else {
                200
            };
        let body = if status == 304 {
            Bytes::new()
        } else {
            Bytes::from(spec)
        };
        Some(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("etag", etag)
                .body(Full::new(body))
                .unwrap(),
        )
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.uri().path() == "/openapi.json" {
            if let Some(response) = self.openapi(&req) {
                return Ok(response);
            }
        }
        if req.uri().path() == "/healthz" {
            let status = if self.healthy.load(Ordering::SeqCst) {
                200
            } else {
                503
            };
            return Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"health")))
                .unwrap());
        }
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(format!(
            "{} {}",
            req.method(),
            req.uri().path_and_query().map_or("", |p| p.as_str())
        ));
        let fail = self.fail_status.load(Ordering::SeqCst);
        if fail != 0 {
            return Ok(Response::builder()
                .status(fail)
                .header("x-backend", self.name.as_str())
                .body(Full::new(Bytes::from_static(b"backend failure")))
                .unwrap());
        }
        let query = req.uri().query().unwrap_or("");
        if let Some(ms) = query.strip_prefix("sleep_ms=") {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let mut headers = BTreeMap::new();
        for (name, value) in req.headers() {
            headers.insert(
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            );
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let json = serde_json::json!({
            "backend": self.name,
            "method": method,
            "path": path,
            "headers": headers,
            "body_len": body,
        });
        Ok(Response::builder()
            .header("content-type", "application/json")
            .header("x-backend", self.name.as_str())
            .body(Full::new(Bytes::from(json.to_string())))
            .unwrap())
    }
}

/// Writes a file atomically (rename), as Kubernetes does for Secrets.
pub fn write_atomic(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A gateway config with the usual plain listener and admin address in
/// front of `rest` (which may use the same placeholders).
pub fn with_plain_listener(rest: &str) -> String {
    format!(
        "listeners:\n  - {{ name: plain, address: '127.0.0.1:{{PORT}}' }}\nadmin: {{ address: '127.0.0.1:{{ADMIN}}' }}\n{rest}"
    )
}

/// A real `redis-server` on a loopback port, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (tests/run.sh installs it)");
        let up = eventually(Duration::from_secs(10), || async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return false;
            };
            let mut buf = [0u8; 7];
            stream.write_all(b"PING\r\n").await.is_ok()
                && stream.read_exact(&mut buf).await.is_ok()
                && &buf == b"+PONG\r\n"
        })
        .await;
        assert!(up, "redis-server did not start on {port}");
        RedisServer {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Hex SHA-256 of a text, computed by openssl (an independent implementation).
pub fn sha256_hex(text: &str) -> String {
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        })
        .expect("openssl");
    let text = String::from_utf8(output.stdout).expect("hex");
    text.split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// A real three-node Redis Cluster on loopback (no replicas), killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // The cluster bus listens on port + 10000: both must be free.
            let port = loop {
                let candidate = free_port();
                if candidate < 50_000
                    && std::net::TcpListener::bind(("127.0.0.1", candidate + 10_000)).is_ok()
                {
                    break candidate;
                }
            };
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&conf)
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            nodes.push(RedisServer {
                child: Some(child),
                port,
            });
        }
        for node in &nodes {
            let port = node.port;
            assert!(
                eventually(Duration::from_secs(10), || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                })
                .await
            );
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let first = nodes[0].port;
        let ok = eventually(Duration::from_secs(20), || async move {
            Command::new("redis-cli")
                .args(["-p", &first.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        })
        .await;
        assert!(ok, "cluster did not become ready");
        RedisCluster { nodes, _dir: dir }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}

/// Runs the third-party `openapi-spec-validator` (PyPI) on a document.
pub fn assert_valid_openapi(document: &[u8], what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("document.json");
    std::fs::write(&path, document).expect("write document");
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("python3 with openapi-spec-validator (tests/run.sh installs it from PyPI)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(": OK"),
        "{what}: {stdout}"
    );
}

/// `GET url` and its JSON body (any status).
pub async fn get_json(url: &str) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON body")
}

/// Whether `GET url` answers 200 within `limit`.
pub async fn answers_ok(url: &str, limit: Duration) -> bool {
    eventually(limit, || async {
        client()
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

/// A child process killed and reaped when dropped (a failed assertion must
/// not leave it running).
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Waits up to `limit` for the process to exit by itself (called from
    /// `spawn_blocking` or plain threads, never on a runtime thread).
    #[allow(clippy::disallowed_methods)]
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `portcullis check -c FILE`: the exit code and stderr.
pub fn run_check(file: &Path) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .args(["check", "-c"])
        .arg(file)
        .output()
        .expect("run portcullis check");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An HTTP/1 response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and headers as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value (first, case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Writes `request` as is on a new connection and reads every response
/// until the peer closes or `limit` passes.
pub async fn raw_exchange(port: u16, request: &[u8], limit: Duration) -> Vec<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return Vec::new();
    };
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    parse_responses(&received)
}

/// Splits a byte stream into HTTP/1 responses (Content-Length or
/// chunked bodies; a response without either runs to the end).
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut response = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        bytes = &bytes[end + 4..];
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if let Some(length) = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
        {
            let length: usize = length;
            let take = length.min(bytes.len());
            response.body = bytes[..take].to_vec();
            bytes = &bytes[take..];
        } else if chunked {
            loop {
                let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else {
                    bytes = &[];
                    break;
                };
                let size = std::str::from_utf8(&bytes[..line_end])
                    .ok()
                    .and_then(|s| {
                        usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok()
                    })
                    .unwrap_or(0);
                bytes = &bytes[line_end + 2..];
                if size == 0 {
                    bytes = bytes.strip_prefix(b"\r\n").unwrap_or(bytes);
                    break;
                }
                let take = size.min(bytes.len());
                response.body.extend_from_slice(&bytes[..take]);
                bytes = bytes[take..]
                    .strip_prefix(b"\r\n")
                    .unwrap_or(&bytes[take..]);
            }
        } else if !(100..200).contains(&status) && status != 204 && status != 304 {
            response.body = bytes.to_vec();
            bytes = &[];
        }
        out.push(response);
    }
    out
}

/// A real PostgreSQL server (Debian's `postgresql`: `initdb` and `postgres`
/// into a temporary directory) on a loopback port, stopped on drop by PID.
/// As root, the server runs as the `postgres` user (it refuses root).
pub struct PostgresServer {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// Where Debian keeps the server binaries (not on PATH).
fn postgres_bin(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join(name).exists() {
                return dir.join(name);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map(|v| v.join("bin").join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found: install postgresql (tests/run.sh does)"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn as_postgres_user(program: PathBuf) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PostgresServer {
    pub async fn start() -> PostgresServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let init = as_postgres_user(postgres_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "portcullis",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("initdb");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let child = as_postgres_user(postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let server = PostgresServer {
            child: Some(child),
            port,
            _dir: dir,
        };
        let url = server.url();
        let up = eventually(Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    Command::new("psql")
                        .args([url.as_str(), "-qAtc", "SELECT 1"])
                        .output()
                        .is_ok_and(|o| o.status.success())
                })
                .await
                .unwrap_or(false)
            }
        })
        .await;
        assert!(up, "postgres did not start on {port}");
        server
    }

    pub fn url(&self) -> String {
        format!("postgres://portcullis@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown (the server's children go too).
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
