//! One JSON line per request on stdout. Never the query string, cookies or
//! Authorization: those carry secrets.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

#[derive(Serialize)]
pub struct AccessLine<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub client: Option<String>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_received: usize,
    pub bytes_sent: usize,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An injected fault (`delay`, `abort`), so test traffic is told apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
    /// Why the gateway refused the request (which token check failed, which
    /// target rule): never sent to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub fn write(line: &AccessLine<'_>) {
    let Ok(mut bytes) = serde_json::to_vec(line) else {
        return;
    };
    bytes.push(b'\n');
    // One write per line so lines from several threads never interleave.
    let _ = std::io::stdout().lock().write_all(&bytes);
}
