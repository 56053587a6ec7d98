//! TLS and mutual TLS for barrage's gRPC links (controller → agents,
//! controller → GPU exporters), loaded from PEM files.
//!
//! - [`ClientTls`]: what the controller presents and trusts, from the plan's
//!   `[cluster] tls_ca`, `tls_cert`, `tls_key`, `tls_domain`.
//! - [`ServerTls`]: what an agent or exporter serves with, from its
//!   `--tls-cert`, `--tls-key` and (mutual TLS) `--tls-client-ca` flags.
//!
//! Every file is read and checked when loaded (PEM syntax, X.509 for the CAs,
//! a private key that matches its certificate), so a bad file is reported
//! before any connection, naming the plan key or flag and the path. Neither
//! type prints key material in `Debug`. TLS does not replace the shared
//! token (`crate::auth`): it hides it, and the API keys sent in `Prepare`,
//! from the network, and (mutual TLS) keeps unknown clients from ever
//! reaching the token check.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// How long a server waits for a client to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material could not be used. `key` is the plan key
/// (`cluster.tls_ca`) or the flag (`--tls-cert`) that named the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// (The I/O error is in the message, not a `source`: printing the
    /// chain would repeat it.)
    #[error("{key}: cannot read {}: {error}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{key}: {}: {reason}", path.display())]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
}

/// A PEM file as read, with where it came from (for error messages).
struct PemFile {
    key: &'static str,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl PemFile {
    fn read(key: &'static str, path: PathBuf) -> Result<Self, TlsError> {
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Self { key, path, bytes }),
            Err(error) => Err(TlsError::Read { key, path, error }),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> TlsError {
        TlsError::Invalid {
            key: self.key,
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Every `CERTIFICATE` block; at least one.
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(self.invalid("no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
        }
        Ok(certs)
    }

    /// A CA bundle: every certificate must parse as a trust anchor.
    fn check_ca(&self) -> Result<(), TlsError> {
        let mut roots = RootCertStore::empty();
        for (i, cert) in self.certificates()?.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| self.invalid(format!("certificate #{} is unusable: {e}", i + 1)))?;
        }
        Ok(())
    }

    /// Exactly what a private key file must hold; the key itself is not kept here.
    fn check_key(&self) -> Result<(), TlsError> {
        PrivateKeyDer::from_pem_slice(&self.bytes)
            .map(drop)
            .map_err(|e| {
                self.invalid(format!(
                    "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"
                ))
            })
    }
}

/// Resolves `path` against `base` (the plan's folder) when relative.
fn resolve(path: &Path, base: Option<&Path>) -> PathBuf {
    match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_owned(),
    }
}

/// A certificate and its private key, as PEM; `Debug` shows neither.
#[derive(Clone)]
struct KeyPair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl KeyPair {
    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// The controller's side: the CA that signed the agents' (and exporters')
/// certificates, optionally its own certificate for mutual TLS, and the name
/// to verify.
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<KeyPair>,
    domain: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mutual", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads `[cluster] tls_*`. `Ok(None)`: no TLS key is set (plaintext).
    /// Relative paths are resolved against `base` (the plan file's folder),
    /// or the working directory when `base` is `None`.
    pub fn from_cluster(
        cluster: &crate::plan::ClusterSection,
        base: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let Some(ca) = &cluster.tls_ca else {
            let orphan = [
                ("cluster.tls_cert", cluster.tls_cert.is_some()),
                ("cluster.tls_key", cluster.tls_key.is_some()),
                ("cluster.tls_domain", cluster.tls_domain.is_some()),
            ]
            .into_iter()
            .find(|(_, set)| *set);
            return match orphan {
                None => Ok(None),
                Some((key, _)) => Err(TlsError::Config {
                    key,
                    reason: "set without cluster.tls_ca (the CA that signed the agents' \
                             certificates), which is what turns TLS on"
                        .into(),
                }),
            };
        };
        let ca = PemFile::read("cluster.tls_ca", resolve(ca, base))?;
        ca.check_ca()?;
        let identity = match (&cluster.tls_cert, &cluster.tls_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::Config {
                    key: "cluster.tls_key",
                    reason: "required with cluster.tls_cert (mutual TLS)".into(),
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Config {
                    key: "cluster.tls_cert",
                    reason: "required with cluster.tls_key (mutual TLS)".into(),
                });
            }
            (Some(cert), Some(key)) => {
                let cert = PemFile::read("cluster.tls_cert", resolve(cert, base))?;
                cert.certificates()?;
                let key = PemFile::read("cluster.tls_key", resolve(key, base))?;
                key.check_key()?;
                Some((cert, key))
            }
        };
        let domain = match &cluster.tls_domain {
            Some(d) => {
                let d = d.trim();
                ServerName::try_from(d).map_err(|e| TlsError::Config {
                    key: "cluster.tls_domain",
                    reason: format!("{d:?} is not a host name or IP address: {e}"),
                })?;
                Some(d.to_owned())
            }
            None => None,
        };
        let tls = Self {
            ca_pem: ca.bytes,
            identity: identity.as_ref().map(|(c, k)| KeyPair {
                cert_pem: c.bytes.clone(),
                key_pem: k.bytes.clone(),
            }),
            domain,
        };
        // Builds the rustls client config once: a key that does not belong to
        // its certificate fails here, not at the first connection.
        if let (Err(e), Some((cert, _))) = (
            tls.apply(Endpoint::from_static("https://localhost")),
            &identity,
        ) {
            return Err(cert.invalid(format!("with cluster.tls_key: {}", error_chain(&e))));
        }
        Ok(Some(tls))
    }

    /// Mutual TLS: a client certificate is presented.
    pub fn is_mutual(&self) -> bool {
        self.identity.is_some()
    }

    /// The name verified in the server's certificate (`None`: the host of
    /// each address).
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// tonic's client configuration.
    pub fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(identity) = &self.identity {
            config = config.identity(identity.identity());
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }

    /// Turns on TLS for `endpoint`, which must be an `https://` URI.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        endpoint.tls_config(self.config())
    }
}

/// An agent's or exporter's side: its certificate and key, and for mutual
/// TLS the CA that must have signed every client's certificate.
#[derive(Clone)]
pub struct ServerTls {
    identity: KeyPair,
    client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads `--tls-cert`, `--tls-key` and, for mutual TLS (every client
    /// must present a certificate signed by it), `--tls-client-ca`.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let cert = PemFile::read("--tls-cert", cert.to_owned())?;
        cert.certificates()?;
        let key = PemFile::read("--tls-key", key.to_owned())?;
        key.check_key()?;
        let client_ca = match client_ca {
            Some(path) => {
                let ca = PemFile::read("--tls-client-ca", path.to_owned())?;
                ca.check_ca()?;
                Some(ca)
            }
            None => None,
        };
        let tls = Self {
            identity: KeyPair {
                cert_pem: cert.bytes.clone(),
                key_pem: key.bytes,
            },
            client_ca_pem: client_ca.map(|c| c.bytes),
        };
        // Builds the rustls server config once: a key that does not belong
        // to the certificate fails here, not at the first connection.
        tls.apply(Server::builder())
            .map_err(|e| cert.invalid(format!("with --tls-key: {}", error_chain(&e))))?;
        Ok(tls)
    }

    /// Mutual TLS: clients without a certificate signed by the client CA
    /// are refused during the handshake.
    pub fn is_mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// tonic's server configuration.
    pub fn config(&self) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new()
            .identity(self.identity.identity())
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }

    /// Turns on TLS for a server builder.
    pub fn apply<L>(&self, server: Server<L>) -> Result<Server<L>, tonic::transport::Error> {
        server.tls_config(self.config())
    }
}

/// Why a connection failed, for a person: the whole cause chain (see
/// [`error_chain`]; a `tonic::Status` is read as its message and sources),
/// then a hint for the TLS failures people meet (unknown CA, wrong name,
/// missing or refused client certificate, TLS on one side only). `tls`: the
/// client was using TLS.
pub fn describe_failure(e: &(dyn std::error::Error + 'static), tls: bool) -> String {
    let reason = match e.downcast_ref::<tonic::Status>() {
        // A Status prints its source's Debug form: read its parts instead.
        Some(status) => {
            let mut parts = Vec::new();
            push_part(&mut parts, status.message().to_owned());
            push_chain(&mut parts, std::error::Error::source(status));
            if parts.is_empty() {
                status.code().to_string()
            } else {
                join_parts(parts)
            }
        }
        None => error_chain(e),
    };
    match hint(&reason, tls) {
        Some(hint) => format!("{reason} ({hint})"),
        None => reason,
    }
}

fn hint(reason: &str, tls: bool) -> Option<&'static str> {
    let lower = reason.to_ascii_lowercase();
    let has = |w: &str| lower.contains(w);
    if has("certificaterequired") {
        return Some(
            "TLS: the server requires a client certificate (mutual TLS): set cluster.tls_cert \
             and cluster.tls_key",
        );
    }
    if has("alert: unknownca") || has("alert: badcertificate") || has("alert: decrypterror") {
        return Some(
            "TLS: the server does not accept our client certificate: is cluster.tls_cert signed \
             by the CA it was given with --tls-client-ca?",
        );
    }
    if has("unknownissuer") || has("badsignature") {
        return Some("TLS: the server's certificate is not signed by cluster.tls_ca");
    }
    if has("notvalidforname") || has("not valid for name") {
        return Some(
            "TLS: the server's certificate does not carry this name: set cluster.tls_domain to \
             a name it carries",
        );
    }
    if has("expired") || has("not valid yet") || has("notvalidyet") {
        return Some("TLS: a certificate is outside its validity period (check the clocks)");
    }
    if tls && (has("invalidcontenttype") || has("corrupt message") || has("handshake eof")) {
        return Some("TLS handshake failed: is the server serving TLS (--tls-cert/--tls-key)?");
    }
    if tls
        && (has("broken pipe")
            || has("reset")
            || has("closed")
            || has("eof")
            || has("not ready")
            || has("unexpected end"))
    {
        // Its certificate was accepted (else the reason says so), then it
        // hung up: what a server requiring mutual TLS does, when the alert
        // it sent was lost to the race with our first write (hyper then says
        // "closed", "reset" or "connection was not ready").
        return Some(
            "TLS: the server closed the connection after the handshake: it may require a client \
             certificate (cluster.tls_cert and cluster.tls_key) or not accept ours",
        );
    }
    if !tls && !has("refused") && !has("timed out") && !has("dns error") {
        return Some("if the server serves TLS, set cluster.tls_ca");
    }
    None
}

/// `e` and its sources, joined by `: `, with a source left out when the
/// message above already contains it. tonic's transport errors say only
/// "transport error" at the top; the reason (refused, unknown CA, missing
/// client certificate) is further down.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    push_chain(&mut parts, Some(e));
    join_parts(parts)
}

fn push_part(parts: &mut Vec<String>, msg: String) {
    if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
        parts.push(msg);
    }
}

fn push_chain(parts: &mut Vec<String>, mut next: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(err) = next {
        push_part(parts, err.to_string());
        next = err.source();
    }
}

fn join_parts(mut parts: Vec<String>) -> String {
    // "transport error: X" says no more than "X".
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ClusterSection;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "barrage-tls-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn no_tls_keys_is_plaintext_and_orphans_are_named() {
        assert!(
            ClientTls::from_cluster(&ClusterSection::default(), None)
                .expect("ok")
                .is_none()
        );
        let cluster = ClusterSection {
            tls_domain: Some("agents.internal".into()),
            ..ClusterSection::default()
        };
        let err = ClientTls::from_cluster(&cluster, None).expect_err("orphan domain");
        assert!(err.to_string().starts_with("cluster.tls_domain: "), "{err}");
        let cluster = ClusterSection {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..ClusterSection::default()
        };
        let err = ClientTls::from_cluster(&cluster, None).expect_err("no CA");
        assert!(err.to_string().starts_with("cluster.tls_cert: "), "{err}");
    }

    #[test]
    fn missing_and_malformed_files_name_the_key_and_the_path() {
        let dir = scratch("bad");
        let cluster = ClusterSection {
            tls_ca: Some("nope/ca.pem".into()),
            ..ClusterSection::default()
        };
        let err = ClientTls::from_cluster(&cluster, Some(&dir)).expect_err("missing");
        let text = err.to_string();
        assert!(text.starts_with("cluster.tls_ca: cannot read "), "{text}");
        assert!(
            text.contains(&dir.join("nope/ca.pem").display().to_string()),
            "relative to the plan's folder: {text}"
        );

        std::fs::write(dir.join("ca.pem"), "not a certificate\n").expect("write");
        let cluster = ClusterSection {
            tls_ca: Some("ca.pem".into()),
            ..ClusterSection::default()
        };
        let err = ClientTls::from_cluster(&cluster, Some(&dir)).expect_err("garbage");
        assert!(
            err.to_string().contains("no PEM certificate"),
            "{}",
            err.to_string()
        );

        std::fs::write(
            dir.join("junk.pem"),
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let cluster = ClusterSection {
            tls_ca: Some(dir.join("junk.pem")),
            ..ClusterSection::default()
        };
        let err = ClientTls::from_cluster(&cluster, None).expect_err("not X.509");
        assert!(
            err.to_string().contains("certificate #1 is unusable"),
            "{err}"
        );

        let err = ServerTls::load(&dir.join("ca.pem"), &dir.join("missing.pem"), None)
            .expect_err("garbage cert");
        assert!(err.to_string().starts_with("--tls-cert: "), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failures_get_a_tls_hint() {
        let h = |r: &str, tls| hint(r, tls).unwrap_or_default();
        assert!(
            h(
                "connection error: received fatal alert: CertificateRequired",
                true
            )
            .contains("requires a client certificate")
        );
        assert!(
            h("invalid peer certificate: UnknownIssuer", true)
                .contains("not signed by cluster.tls_ca")
        );
        assert!(
            h("received corrupt message of type InvalidContentType", true).contains("serving TLS")
        );
        // The refusal's alert lost to the race with the first write.
        assert!(
            h(
                "connection error: stream closed because of a broken pipe",
                true
            )
            .contains("client certificate")
        );
        assert!(h("h2 protocol error: frame with invalid size", false).contains("cluster.tls_ca"));
        assert_eq!(
            hint(
                "tcp connect error: Connection refused (os error 111)",
                false
            ),
            None
        );
    }

    #[test]
    fn error_chain_walks_sources_without_repeating() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl fmt::Display for E {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "transport error",
            Some(Box::new(E(
                "error trying to connect: invalid peer certificate: UnknownIssuer",
                Some(Box::new(E("invalid peer certificate: UnknownIssuer", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "error trying to connect: invalid peer certificate: UnknownIssuer"
        );
    }
}
