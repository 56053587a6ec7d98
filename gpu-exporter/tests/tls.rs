//! TLS and mutual TLS on the exporter's gRPC port, with certificates made at
//! test time: `ExporterClient::connect_with` streams samples when it trusts
//! the exporter's CA (and presents a client certificate for mutual TLS), and
//! fails at connect, naming the exporter and the TLS reason, otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use barrage_common::auth::Token;
use barrage_common::plan::ClusterSection;
use barrage_common::tls::{ClientTls, ServerTls};
use barrage_gpu_exporter::client::{ClientError, ExporterClient};
use barrage_gpu_exporter::host::FakeHost;
use barrage_gpu_exporter::sampler::SamplerConfig;
use barrage_gpu_exporter::source::FakeSource;
use barrage_gpu_exporter::{Exporter, ServeError};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{Binary, within};

const TOKEN: &str = "tls-exporter-token";

/// A CA and the PEM files it signed, in one scratch folder.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `ca.pem`, `server.pem`/`server.key` (for `localhost` and
    /// `127.0.0.1`), `client.pem`/`client.key`; and from an unrelated CA:
    /// `other-ca.pem`, `other-client.pem`/`other-client.key`.
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "exporter-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let ca = new_ca("barrage test CA");
        let other = new_ca("someone else's CA");
        write(&dir, "ca.pem", &ca.0);
        write(&dir, "other-ca.pem", &other.0);
        leaf(&dir, "server", &ca.1, ExtendedKeyUsagePurpose::ServerAuth);
        leaf(&dir, "client", &ca.1, ExtendedKeyUsagePurpose::ClientAuth);
        leaf(
            &dir,
            "other-client",
            &other.1,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn client(&self, ca: &str, identity: Option<&str>, domain: Option<&str>) -> ClientTls {
        let cluster = ClusterSection {
            tls_ca: Some(ca.into()),
            tls_cert: identity.map(|i| format!("{i}.pem").into()),
            tls_key: identity.map(|i| format!("{i}.key").into()),
            tls_domain: domain.map(str::to_owned),
            ..ClusterSection::default()
        };
        ClientTls::from_cluster(&cluster, Some(&self.dir))
            .expect("valid TLS files")
            .expect("TLS on")
    }

    fn server(&self, client_ca: Option<&str>) -> ServerTls {
        let ca = client_ca.map(|c| self.path(c));
        ServerTls::load(
            &self.path("server.pem"),
            &self.path("server.key"),
            ca.as_deref(),
        )
        .expect("server TLS")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write PEM");
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(dir: &Path, name: &str, ca: &Issuer<'static, KeyPair>, usage: ExtendedKeyUsagePurpose) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).expect("sign");
    write(dir, &format!("{name}.pem"), &cert.pem());
    write(dir, &format!("{name}.key"), &key.serialize_pem());
}

/// An in-process exporter (2 fake GPUs) serving gRPC over TLS on `127.0.0.1:0`.
struct TlsExporter {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TlsExporter {
    async fn start(tls: ServerTls) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = grpc.local_addr().expect("addr").to_string();
        let exporter = Exporter::start(
            Box::new(FakeSource::new(2)),
            Box::new(FakeHost::new()),
            SamplerConfig {
                interval: Duration::from_millis(20),
                ..SamplerConfig::default()
            },
        )
        .expect("start exporter");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(exporter.serve_with(
            grpc,
            None,
            Some(Token::new(TOKEN)),
            Some(tls),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("exporter shutdown", &mut self.task)
            .await
            .expect("serve task panicked")
            .expect("serve returned an error");
    }
}

async fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<ExporterClient, ClientError> {
    within(
        "connect",
        ExporterClient::connect_with(addr, Some(Token::new(TOKEN)), tls),
    )
    .await
}

/// Health, clock probes and a few samples over the encrypted channel.
async fn streams(addr: &str, tls: &ClientTls) {
    let mut client = connect(addr, Some(tls)).await.expect("connect over TLS");
    let health = within("health", client.health()).await.expect("health");
    assert_eq!(health.gpu_count, 2);
    within("clock", client.clock_offset())
        .await
        .expect("clock over TLS");
    let mut samples = Box::pin(client.watch());
    for _ in 0..3 {
        let sample = within("sample", samples.next())
            .await
            .expect("stream open")
            .expect("sample");
        assert_eq!(sample.gpus.len(), 2);
    }
}

/// The refusal names the exporter and, in TLS terms, why.
async fn refused(addr: &str, tls: Option<&ClientTls>, words: &[&str]) -> String {
    let err = connect(addr, tls).await.expect_err("refused");
    let text = err.to_string();
    eprintln!("refused: {text}");
    assert!(matches!(err, ClientError::Handshake { .. }), "{text}");
    assert!(
        text.starts_with(&format!("cannot connect to the exporter at {addr}: ")),
        "{text}"
    );
    let lower = text.to_ascii_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(w)),
        "none of {words:?} in {text}"
    );
    text
}

#[tokio::test]
async fn tls_streams_with_the_right_ca_and_refuses_a_wrong_one() {
    let pki = Pki::new();
    let server = TlsExporter::start(pki.server(None)).await;
    streams(&server.addr, &pki.client("ca.pem", None, Some("localhost"))).await;
    // No domain: the IP in the address is verified.
    streams(&server.addr, &pki.client("ca.pem", None, None)).await;
    refused(
        &server.addr,
        Some(&pki.client("other-ca.pem", None, Some("localhost"))),
        &["unknownissuer", "unknown issuer"],
    )
    .await;
    refused(
        &server.addr,
        Some(&pki.client("ca.pem", None, Some("gpu.example.com"))),
        &["notvalidforname", "not valid for"],
    )
    .await;
    // Plaintext to a TLS port.
    refused(&server.addr, None, &["tls"]).await;
    server.stop().await;
    // Nobody listening: unreachable, not a TLS problem.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let err = connect(&closed, Some(&pki.client("ca.pem", None, None)))
        .await
        .expect_err("nobody listening");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let server = TlsExporter::start(pki.server(Some("ca.pem"))).await;
    streams(
        &server.addr,
        &pki.client("ca.pem", Some("client"), Some("localhost")),
    )
    .await;
    refused(
        &server.addr,
        Some(&pki.client("ca.pem", None, Some("localhost"))),
        &["certificate"],
    )
    .await;
    refused(
        &server.addr,
        Some(&pki.client("ca.pem", Some("other-client"), Some("localhost"))),
        &["certificate", "tls"],
    )
    .await;
    server.stop().await;
    // A client key that is not the certificate's: refused when loaded.
    let mismatched = ClusterSection {
        tls_ca: Some("ca.pem".into()),
        tls_cert: Some("client.pem".into()),
        tls_key: Some("other-client.key".into()),
        ..ClusterSection::default()
    };
    let err = ClientTls::from_cluster(&mismatched, Some(&pki.dir)).expect_err("key mismatch");
    assert!(
        err.to_string().starts_with("cluster.tls_cert: ")
            && err.to_string().contains("with cluster.tls_key"),
        "{err}"
    );
}

#[tokio::test]
async fn the_binary_serves_tls_and_refuses_bad_files() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.pem").display().to_string(),
        pki.path("server.key").display().to_string(),
        pki.path("ca.pem").display().to_string(),
    );
    let mut bin = Binary::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--fake-gpus",
            "2",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        Some(TOKEN),
    );
    let addr = bin.grpc_addr().await;
    let line = bin.seen.last().cloned().unwrap_or_default();
    assert!(line.contains("mutual-tls"), "{line}");
    streams(
        &addr,
        &pki.client("ca.pem", Some("client"), Some("localhost")),
    )
    .await;
    let _ = bin.child.start_kill();
    let key_pem = std::fs::read_to_string(&key).expect("key");
    let body = key_pem
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("key body");
    assert!(
        bin.seen
            .iter()
            .all(|l| !l.contains(body) && !l.contains(TOKEN)),
        "secrets in the log: {:#?}",
        bin.seen
    );

    // A key that is not the certificate's: exit 64 before listening.
    let other_key = pki.path("client.key").display().to_string();
    let mut bad = Binary::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--fake-gpus",
            "1",
            "--tls-cert",
            &cert,
            "--tls-key",
            &other_key,
        ],
        Some(TOKEN),
    );
    let status = within("refused start", bad.child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(64));
    let line = bad.wait_for_line("--tls-cert").await;
    assert!(!line.contains("listening"), "{line}");
}
