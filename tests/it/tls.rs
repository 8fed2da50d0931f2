use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::{eventually, write_atomic, Backend, Gateway};

/// A throw-away CA made for one test; nothing is committed.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn leaf(&self, names: &[&str], client: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn connector(ca: &TestCa, client_cert: Option<&Leaf>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(
    connector: &TlsConnector,
    port: u16,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(server_name, tcp).await
}

fn served_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// One HTTP/1.1 request on an open connection; returns the status.
async fn get(stream: &mut TlsStream<TcpStream>, host: &str) -> std::io::Result<u16> {
    stream
        .write_all(format!("GET /tls HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("read timed out"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = &text[..head_end];
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                return Ok(head[9..12].parse().unwrap());
            }
        }
    }
}

struct TlsSetup {
    gateway: Gateway,
    ca: TestCa,
    certs: Vec<Leaf>,
    _echo: Backend,
}

async fn start(client_auth: Option<(&TestCa, &str)>) -> TlsSetup {
    let ca = TestCa::new("Portcullis test CA");
    let certs = vec![
        ca.leaf(&["default.test"], false),
        ca.leaf(&["a.test"], false),
        ca.leaf(&["b.test", "b2.test"], false),
        ca.leaf(&["*.wild.test"], false),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut cert_list = String::new();
    for (i, leaf) in certs.iter().enumerate() {
        std::fs::write(dir.path().join(format!("c{i}.pem")), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join(format!("c{i}.key")), &leaf.key_pem).unwrap();
        cert_list.push_str(&format!("        - {{ cert: c{i}.pem, key: c{i}.key }}\n"));
    }
    let client_auth_yaml = match client_auth {
        Some((client_ca, mode)) => {
            std::fs::write(dir.path().join("clients.pem"), client_ca.pem()).unwrap();
            format!("      client_auth: {{ ca: clients.pem, mode: {mode} }}\n")
        }
        None => String::new(),
    };
    let echo = Backend::start("echo").await;
    let config = format!(
        "listeners:\n  - name: tls\n    address: '127.0.0.1:{{PORT}}'\n    hsts: {{ max_age: 1h }}\n    tls:\n      certificates:\n{cert_list}{client_auth_yaml}admin: {{ address: '127.0.0.1:{{ADMIN}}' }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr
    );
    let gateway = Gateway::start_in(dir, &config).await;
    TlsSetup {
        gateway,
        ca,
        certs,
        _echo: echo,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_certificate_and_default() {
    let setup = start(None).await;
    let connector = connector(&setup.ca, None);
    let port = setup.gateway.port;
    for (name, expected) in [
        ("a.test", 1),
        ("b2.test", 2),
        ("x.wild.test", 3),
        ("default.test", 0),
    ] {
        let mut stream = connect(&connector, port, name).await.expect(name);
        assert!(
            served_cert(&stream) == setup.certs[expected].der,
            "wrong certificate for {name}"
        );
        assert_eq!(get(&mut stream, name).await.unwrap(), 200);
    }
    // An unknown name gets the default certificate (which then fails the
    // client's name check), and so does a client that sends no SNI (an IP).
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let insecure = TlsConnector::from(Arc::new(config));
    for name in ["unknown.test", "127.0.0.1", "deep.x.wild.test"] {
        let stream = connect(&insecure, port, name).await.expect(name);
        assert!(
            served_cert(&stream) == setup.certs[0].der,
            "{name} should get the default"
        );
    }

    // h2 over ALPN through a real HTTP client; HSTS set on the TLS listener.
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(setup.ca.pem().as_bytes()).unwrap())
        .resolve("a.test", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let response = client
        .get(format!("https://a.test:{port}/h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=3600"
    );
    let echo: crate::support::Echo = response.json().await.unwrap();
    assert_eq!(echo.headers["x-forwarded-proto"], "https");
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_file_replacement_is_served_within_5s() {
    let setup = start(None).await;
    let connector = connector(&setup.ca, None);
    let port = setup.gateway.port;
    let mut before = connect(&connector, port, "a.test").await.unwrap();
    assert_eq!(get(&mut before, "a.test").await.unwrap(), 200);

    // A broken file first: logged, and the old certificate stays.
    write_atomic(
        &setup.gateway.path("c1.pem"),
        b"-----BEGIN CERTIFICATE-----\nnope\n",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            setup.gateway.stderr().contains("certificate reload failed")
        })
        .await
    );
    let still_old = connect(&connector, port, "a.test").await.unwrap();
    assert!(served_cert(&still_old) == setup.certs[1].der);

    let renewed = setup.ca.leaf(&["a.test"], false);
    let started = Instant::now();
    write_atomic(&setup.gateway.path("c1.key"), renewed.key_pem.as_bytes());
    write_atomic(&setup.gateway.path("c1.pem"), renewed.cert_pem.as_bytes());
    let served = eventually(Duration::from_secs(5), || async {
        match connect(&connector, port, "a.test").await {
            Ok(stream) => served_cert(&stream) == renewed.der,
            Err(_) => false,
        }
    })
    .await;
    assert!(served, "renewed certificate not served within 5 s");
    eprintln!("renewed certificate served after {:?}", started.elapsed());
    // The connection opened before the change still works.
    assert_eq!(get(&mut before, "a.test").await.unwrap(), 200);
    assert!(served_cert(&before) == setup.certs[1].der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_rejects_clients_without_certificate() {
    let client_ca = TestCa::new("client CA");
    let setup = start(Some((&client_ca, "required"))).await;
    let port = setup.gateway.port;

    let anonymous = connector(&setup.ca, None);
    // TLS 1.3 may finish the client's side of the handshake before the
    // server's alert arrives: the failure then shows on the first request.
    let rejected = match connect(&anonymous, port, "a.test").await {
        Err(_) => true,
        Ok(mut stream) => get(&mut stream, "a.test").await.is_err(),
    };
    assert!(rejected, "a client without certificate was served");

    let stranger_ca = TestCa::new("other CA");
    let stranger = stranger_ca.leaf(&["client.test"], true);
    let wrong = connector(&setup.ca, Some(&stranger));
    let rejected = match connect(&wrong, port, "a.test").await {
        Err(_) => true,
        Ok(mut stream) => get(&mut stream, "a.test").await.is_err(),
    };
    assert!(
        rejected,
        "a client with a certificate from another CA was served"
    );

    let client_leaf = client_ca.leaf(&["client.test"], true);
    let trusted = connector(&setup.ca, Some(&client_leaf));
    let mut stream = connect(&trusted, port, "a.test").await.unwrap();
    assert_eq!(get(&mut stream, "a.test").await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_optional_accepts_clients_without_certificate() {
    let client_ca = TestCa::new("client CA");
    let setup = start(Some((&client_ca, "optional"))).await;
    let anonymous = connector(&setup.ca, None);
    let mut stream = connect(&anonymous, setup.gateway.port, "a.test")
        .await
        .unwrap();
    assert_eq!(get(&mut stream, "a.test").await.unwrap(), 200);
}

/// A client that opens TLS connections and never finishes the handshake
/// is cut off at `limits.tls_handshake_timeout` (pingora alone waits 60 s),
/// while others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_cut_off() {
    let ca = TestCa::new("Portcullis test CA");
    let leaf = ca.leaf(&["default.test"], false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("c.key"), &leaf.key_pem).unwrap();
    let echo = Backend::start("echo").await;
    let config = format!(
        "listeners:\n  - name: tls\n    address: '127.0.0.1:{{PORT}}'\n    tls:\n      certificates: [{{ cert: c.pem, key: c.key }}]\nadmin: {{ address: '127.0.0.1:{{ADMIN}}' }}\nserver: {{ limits: {{ tls_handshake_timeout: 1s }} }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr
    );
    let gateway = Gateway::start_in(dir, &config).await;
    let port = gateway.port;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if i % 2 == 1 {
            // Half a ClientHello record, then silence.
            tcp.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                .await
                .unwrap();
        }
        stalled.push(tcp);
    }
    // A real client is served meanwhile.
    let connector = connector(&ca, None);
    let mut good = connect(&connector, port, "default.test").await.unwrap();
    assert_eq!(get(&mut good, "default.test").await.unwrap(), 200);
    for (i, mut tcp) in stalled.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        let after = started.elapsed();
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "stalled handshake {i} still open after {after:?}: {closed:?}"
        );
        assert!(
            after < Duration::from_secs(4),
            "{i}: closed after {after:?}"
        );
    }
    eprintln!("stalled handshakes: 20 closed by {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
    let metrics = crate::support::admin_get(gateway.admin, "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("portcullis_tls_handshake_timeouts_total 20"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("handshake"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
