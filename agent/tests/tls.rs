//! TLS and mutual TLS between the controller and real `agent serve`
//! processes, with certificates made at test time: sessions open (hello and
//! clock probes over the encrypted stream) when the controller trusts the
//! agent's CA, and every mismatch (unknown CA, wrong name, missing or foreign
//! client certificate, plaintext on one side) is refused before any session
//! starts, with an error that names the agent and says TLS or certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use barrage_common::auth::Token;
use barrage_common::plan::ClusterSection;
use barrage_common::tls::ClientTls;
use barrage_controller::link::{AgentLink, LinkError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::support::{AgentProcess, TOKEN_VAR, scratch};

const TOKEN: &str = "tls-test-token";
const LIMIT: Duration = Duration::from_secs(30);

/// A CA and the PEM files it signed, in one scratch folder.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `ca.pem`, `server.pem`/`server.key` (for `localhost` and
    /// `127.0.0.1`), `client.pem`/`client.key`; and from an unrelated CA:
    /// `other-ca.pem`, `other-client.pem`/`other-client.key`.
    fn new() -> Self {
        let dir = scratch("tls");
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

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `[cluster]` TLS keys, relative to the scratch folder (as a plan's
    /// would be to the plan's folder).
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

    /// `agent serve` with TLS (and mutual TLS when `client_ca` is given).
    fn agent(&self, client_ca: Option<&str>) -> AgentProcess {
        let (cert, key) = (self.path("server.pem"), self.path("server.key"));
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        let ca = client_ca.map(|c| self.path(c));
        if let Some(ca) = &ca {
            args.extend(["--tls-client-ca", ca]);
        }
        AgentProcess::start(TOKEN, &args)
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

async fn open(agent: &AgentProcess, tls: Option<&ClientTls>) -> Result<AgentLink, LinkError> {
    let token = Token::new(TOKEN);
    tokio::time::timeout(
        LIMIT,
        AgentLink::open(&agent.addr, Some(&token), tls, "tls-run", "tls-test"),
    )
    .await
    .expect("bounded")
}

/// Opens a session and runs the clock probes: a real exchange both ways.
async fn session_works(agent: &AgentProcess, tls: &ClientTls) {
    let mut link = open(agent, Some(tls)).await.expect("session over TLS");
    assert!(!link.hello.agent_id.is_empty());
    tokio::time::timeout(LIMIT, link.align_clock())
        .await
        .expect("bounded")
        .expect("clock probes over TLS");
}

/// The refusal names the agent, says it could not connect, and says why in
/// TLS terms (each `words` entry: at least one of its alternatives appears).
async fn refused(agent: &AgentProcess, tls: Option<&ClientTls>, words: &[&[&str]]) -> String {
    let err = open(agent, tls).await.err().expect("refused");
    let text = err.to_string();
    eprintln!("refused: {text}");
    assert!(matches!(err, LinkError::Connect { .. }), "{text}");
    assert!(
        text.starts_with(&format!("agent {}: cannot connect: ", agent.addr)),
        "{text}"
    );
    let lower = text.to_ascii_lowercase();
    for alternatives in words {
        assert!(
            alternatives.iter().any(|w| lower.contains(w)),
            "none of {alternatives:?} in {text}"
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_session_opens_by_name_and_by_ip_and_still_checks_the_token() {
    let pki = Pki::new();
    let agent = pki.agent(None);
    session_works(&agent, &pki.client("ca.pem", None, Some("localhost"))).await;
    // No tls_domain: the address's host (an IP here) is verified.
    session_works(&agent, &pki.client("ca.pem", None, None)).await;
    // TLS does not replace the token.
    let tls = pki.client("ca.pem", None, Some("localhost"));
    let wrong = Token::new("not-the-token");
    let err = tokio::time::timeout(
        LIMIT,
        AgentLink::open(&agent.addr, Some(&wrong), Some(&tls), "r", "c"),
    )
    .await
    .expect("bounded")
    .err()
    .expect("wrong token refused");
    assert!(matches!(err, LinkError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("Unauthenticated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_and_wrong_name_are_refused_naming_the_agent() {
    let pki = Pki::new();
    let agent = pki.agent(None);
    refused(
        &agent,
        Some(&pki.client("other-ca.pem", None, Some("localhost"))),
        &[&["certificate"], &["unknownissuer", "unknown issuer"]],
    )
    .await;
    refused(
        &agent,
        Some(&pki.client("ca.pem", None, Some("agents.example.com"))),
        &[&["certificate"], &["notvalidforname", "not valid for"]],
    )
    .await;
    // The agent is unharmed by failed handshakes.
    session_works(&agent, &pki.client("ca.pem", None, Some("localhost"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let agent = pki.agent(Some("ca.pem"));
    session_works(
        &agent,
        &pki.client("ca.pem", Some("client"), Some("localhost")),
    )
    .await;
    refused(
        &agent,
        Some(&pki.client("ca.pem", None, Some("localhost"))),
        &[&["certificate"]],
    )
    .await;
    refused(
        &agent,
        Some(&pki.client("ca.pem", Some("other-client"), Some("localhost"))),
        &[&["certificate", "tls"]],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_either_side_fails_clearly() {
    let pki = Pki::new();
    let tls_agent = pki.agent(None);
    refused(&tls_agent, None, &[&["tls"]]).await;
    // Nobody listening: unreachable, no TLS hint.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let tls = pki.client("ca.pem", None, Some("localhost"));
    let err = tokio::time::timeout(LIMIT, AgentLink::open(&closed, None, Some(&tls), "r", "c"))
        .await
        .expect("bounded")
        .err()
        .expect("nobody listening");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("agent {closed}: cannot connect: ")) && text.contains("refused"),
        "{text}"
    );
    assert!(!text.contains("TLS"), "{text}");
    let plain_agent = AgentProcess::start(TOKEN, &[]);
    refused(
        &plain_agent,
        Some(&pki.client("ca.pem", None, Some("localhost"))),
        &[&["tls"]],
    )
    .await;
}

/// Runs `agent serve ARGS` expecting it to refuse to start; its stderr.
async fn refuses_to_start(args: &[&str]) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove(TOKEN_VAR)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let out = tokio::time::timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("bounded")
    .expect("join")
    .expect("output");
    assert!(!out.status.success(), "started: {out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "{out:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_flags_stop_the_agent_before_it_listens() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let missing = pki.path("missing.key");
    let err = refuses_to_start(&["--tls-cert", &cert, "--tls-key", &missing]).await;
    assert!(err.contains("--tls-key: cannot read"), "{err}");
    assert!(err.contains("missing.key"), "{err}");
    // A key that is not the certificate's.
    let other = pki.path("client.key");
    let err = refuses_to_start(&["--tls-cert", &cert, "--tls-key", &other]).await;
    assert!(err.contains("--tls-cert: "), "{err}");
    // A certificate where the key should be.
    let err = refuses_to_start(&["--tls-cert", &cert, "--tls-key", &ca]).await;
    assert!(
        err.contains("--tls-key: ") && err.contains("private key"),
        "{err}"
    );
    let err = refuses_to_start(&["--tls-cert", &cert]).await;
    assert!(err.contains("--tls-key"), "{err}");
    let err = refuses_to_start(&["--tls-client-ca", &ca]).await;
    assert!(err.contains("--tls-cert"), "{err}");
    let _ = key;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_mutual_tls_and_never_shows_the_key() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["serve", "--listen", "127.0.0.1:0", "--token-env", TOKEN_VAR])
        .args([
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ])
        .env(TOKEN_VAR, TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let stderr = child.stderr.take().expect("stderr");
    let line = tokio::time::timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.expect("read stderr");
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("agent serving") {
                    return (line, seen);
                }
            }
            panic!("no 'agent serving' line: {seen}");
        }),
    )
    .await
    .expect("bounded")
    .expect("join");
    let _ = child.kill();
    let _ = child.wait();
    let (serving, seen) = line;
    assert!(serving.contains("mutual-tls"), "{serving}");
    let key_pem = std::fs::read_to_string(&key).expect("key");
    let secret_line = key_pem
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("key body");
    assert!(!seen.contains(secret_line), "key material in the log");
    assert!(!seen.contains("PRIVATE KEY"), "key material in the log");
    assert!(!seen.contains(TOKEN), "the token in the log");
}

/// A whole run through `controller::run::execute` with `[cluster] tls_*`:
/// mutual TLS works end to end; a foreign CA fails before any traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_mutual_tls_runs_and_a_wrong_ca_starts_no_traffic() {
    let _serial = crate::support::LOAD.lock().await;
    let pki = Pki::new();
    let agent = pki.agent(Some("ca.pem"));
    let sim = barrage_llm_sim::SimServer::spawn(Default::default(), ([127, 0, 0, 1], 0).into())
        .await
        .expect("sim");
    let plan = |ca: &str| {
        crate::support::plan_from(&format!(
            r#"
            [target]
            url = "http://{}"
            [request]
            max_tokens = 4
            [load]
            users = 2
            requests = 6
            [cluster]
            agents = ["{}"]
            tls_ca = "{}"
            tls_cert = "{}"
            tls_key = "{}"
            tls_domain = "localhost"
            [output]
            dir = "{}"
            "#,
            sim.addr(),
            agent.addr,
            pki.path(ca),
            pki.path("client.pem"),
            pki.path("client.key"),
            pki.dir.join("results").display()
        ))
    };
    let opts = || barrage_controller::run::RunOptions {
        agent_token: Some(barrage_common::auth::Token::new(TOKEN)),
        ..Default::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new;
    let bad = tokio::time::timeout(
        LIMIT,
        barrage_controller::run::execute(plan("other-ca.pem"), opts(), cancel()),
    )
    .await
    .expect("bounded");
    let err = match bad {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a foreign CA must fail"),
    };
    assert!(
        err.contains(&agent.addr) && err.contains("cannot connect"),
        "{err}"
    );
    assert_eq!(sim.stats().requests, 0, "no traffic after a TLS refusal");
    let ok = tokio::time::timeout(
        LIMIT,
        barrage_controller::run::execute(plan("ca.pem"), opts(), cancel()),
    )
    .await
    .expect("bounded")
    .expect("mutual TLS run");
    assert_eq!(ok.summary.requests_ok, 6);
    assert_eq!(sim.stats().completed, 6);
    sim.shutdown().await;
}
