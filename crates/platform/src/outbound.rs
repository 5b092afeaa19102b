//! Paddock's own calls out of the process: model providers and the Vertex
//! token endpoint (the gateway), the identity provider's discovery document
//! and JWKS (the API), GitHub's REST API (octocrab) and git over HTTPS, S3
//! (aws-sdk-s3) and Redis (`rediss://`).
//!
//! Every one of them speaks TLS with rustls and checks the server's
//! certificate against the operating system's trust store plus
//! `tls.extra_ca_files`; nothing can turn verification off. The HTTP ones
//! (providers, identity provider, GitHub, git) go through the corporate
//! proxy in `[outbound]` unless `no_proxy` names the host. A sandbox's
//! egress never does: its own egress proxy connects directly.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::config::{OutboundConfig, TlsConfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// A setting that cannot work; the message names its key.
    #[error("invalid configuration: `{key}` {message}")]
    Config { key: &'static str, message: String },
}

/// How every outbound client of one process trusts servers and reaches them.
/// Cheap to clone: clones share the certificates and the bundle file.
#[derive(Clone)]
pub struct Outbound {
    /// The CAs of `tls.extra_ca_files`, beside the operating system's.
    extra: Arc<Vec<CertificateDer<'static>>>,
    /// The operating system's CAs and the extra ones as one PEM bundle, for
    /// clients that take a whole trust store (Redis, git); `None` without
    /// extra CAs, when those clients read the system store themselves.
    bundle: Option<Arc<Vec<u8>>>,
    /// The bundle as a file, for git (`GIT_SSL_CAINFO`).
    bundle_file: Option<Arc<BundleFile>>,
    proxy: Option<SecretString>,
    no_proxy: String,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("extra_cas", &self.extra.len())
            .field("proxy", &self.proxy.as_ref().map(|p| without_credentials(p.expose_secret())))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl Outbound {
    /// Reads the extra CA files and checks the proxy, naming the key at
    /// fault. Also makes aws-lc-rs the process's rustls provider.
    pub fn new(tls: &TlsConfig, outbound: &OutboundConfig) -> Result<Self, OutboundError> {
        install_provider();
        let invalid = |key, message: String| OutboundError::Config { key, message };
        let mut extra = Vec::new();
        let mut extra_pem = Vec::new();
        for path in &tls.extra_ca_files {
            let pem = std::fs::read(path)
                .map_err(|e| invalid("tls.extra_ca_files", format!("cannot read {}: {e}", path.display())))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("tls.extra_ca_files", format!("{} is not PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(invalid("tls.extra_ca_files", format!("{} holds no certificate", path.display())));
            }
            for cert in &certs {
                // Refuse at start what rustls would refuse at the first call.
                let mut store = rustls::RootCertStore::empty();
                store.add(cert.clone()).map_err(|e| {
                    invalid(
                        "tls.extra_ca_files",
                        format!("{} has a certificate that cannot be a trust anchor: {e}", path.display()),
                    )
                })?;
                extra_pem.extend(pem_encode(cert));
            }
            extra.extend(certs);
        }
        let bundle = (!extra.is_empty()).then(|| {
            let mut bundle = Vec::new();
            for cert in rustls_native_certs::load_native_certs().certs {
                bundle.extend(pem_encode(&cert));
            }
            bundle.extend(extra_pem);
            bundle
        });
        let bundle_file =
            match &bundle {
                Some(bundle) => Some(Arc::new(BundleFile::write(bundle).map_err(|e| {
                    invalid("tls.extra_ca_files", format!("cannot write the CA bundle git reads: {e}"))
                })?)),
                None => None,
            };
        if let Some(proxy) = &outbound.https_proxy {
            reqwest::Proxy::https(proxy.expose_secret())
                .map_err(|e| invalid("outbound.https_proxy", format!("is not a proxy URL: {e}")))?;
        }
        let this = Self {
            extra: Arc::new(extra),
            bundle: bundle.map(Arc::new),
            bundle_file,
            proxy: outbound.https_proxy.clone(),
            no_proxy: outbound.no_proxy.join(","),
        };
        tracing::debug!(outbound = ?this, "outbound clients configured");
        Ok(this)
    }

    /// The operating system's trust store and no proxy: for tests and tools.
    pub fn system() -> Self {
        install_provider();
        Self { extra: Arc::default(), bundle: None, bundle_file: None, proxy: None, no_proxy: String::new() }
    }

    /// An HTTP client builder with this trust and proxy; callers add their
    /// timeouts. Environment proxies are not read here: `Config::load`
    /// already took them into `[outbound]`.
    pub fn http(&self) -> reqwest::ClientBuilder {
        let certs = self.extra.iter().filter_map(|der| reqwest::Certificate::from_der(der).ok());
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_certs_merge(certs)
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(proxy) = &self.proxy
            && let Ok(proxy) = reqwest::Proxy::https(proxy.expose_secret())
        {
            builder = builder.proxy(proxy.no_proxy(reqwest::NoProxy::from_string(&self.no_proxy)));
        }
        builder
    }

    /// The operating system's CAs and the extra ones as one PEM bundle, for
    /// clients that take a whole trust store (`rediss://`, single server and
    /// Cluster): `None` without extra CAs, when such a client should read
    /// the system store itself.
    pub fn trust_bundle(&self) -> Option<Vec<u8>> {
        self.bundle.as_ref().map(|bundle| bundle.to_vec())
    }

    /// Each CA of `tls.extra_ca_files` as PEM, for clients that add them to
    /// their own system store (the S3 SDK).
    pub fn extra_cas_pem(&self) -> Vec<Vec<u8>> {
        self.extra.iter().map(pem_encode).collect()
    }

    /// A TLS client for raw connections (the relay to a standalone
    /// gateway), trusting the operating system's store and the extra CAs.
    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots.add_parsable_certificates(self.extra.iter().cloned());
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }

    /// Environment for a `git` command that reaches a remote: the trust
    /// bundle (when there are extra CAs) and the proxy, replacing whatever
    /// proxy variables the worker itself was started with.
    pub fn git_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ]
        .iter()
        .map(|name| ((*name).to_owned(), String::new()))
        .collect();
        if let Some(proxy) = &self.proxy {
            env.push(("https_proxy".to_owned(), proxy.expose_secret().to_owned()));
            env.push(("no_proxy".to_owned(), self.no_proxy.clone()));
        }
        if let Some(file) = &self.bundle_file {
            env.push(("GIT_SSL_CAINFO".to_owned(), file.path.display().to_string()));
        }
        env
    }
}

/// A TLS server configuration from a PEM certificate chain and key,
/// refusing files that cannot serve, naming `key` (the chain's setting).
pub fn server_config(
    key: &'static str,
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::ServerConfig, OutboundError> {
    install_provider();
    let invalid = |message: String| OutboundError::Config { key, message };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| invalid(format!("{} is not a PEM certificate chain: {e}", cert_file.display())))?;
    let private = rustls::pki_types::PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| invalid(format!("{} is not a PEM private key: {e}", key_file.display())))?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| invalid(format!("the certificate and key cannot serve TLS: {e}")))
}

/// Why a call out failed, naming the host; a certificate the process does
/// not trust is told apart from an unreachable host (the TLS handshake
/// failed, so no request, and no body, was sent).
pub fn describe(error: &reqwest::Error) -> String {
    let host = error
        .url()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| "the server".to_owned());
    if let Some(tls) = tls_failure(error) {
        return untrusted(&host, &tls);
    }
    let what = if error.is_decode() || error.is_body() {
        format!("{host} answered unexpectedly")
    } else if error.is_timeout() {
        format!("{host} did not answer in time")
    } else {
        format!("cannot reach {host}")
    };
    chain(what, error)
}

/// [`describe`] for any error whose chain may hold a TLS failure.
pub fn describe_failure(error: &(dyn StdError + 'static), host: &str) -> String {
    match tls_failure(error) {
        Some(tls) => untrusted(host, &tls),
        None => chain(format!("cannot reach {host}"), error),
    }
}

fn untrusted(host: &str, why: &str) -> String {
    format!("TLS with {host} failed before any request was sent: {why}")
}

/// Several crates bring rustls; they must agree on one provider (the redis
/// crate asks for the process default). The first call wins; later ones
/// change nothing.
fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// `message` and every distinct message in `error`'s chain.
fn chain(mut message: String, error: &(dyn StdError + 'static)) -> String {
    let mut source = Some(error);
    let mut last = String::new();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !last.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        last = text;
        source = e.source();
    }
    message
}

/// The rustls error somewhere in `error`'s chain, in words. An
/// `io::Error` hides what it wraps from `source()` (and may wrap another
/// `io::Error`), so those are looked into as well.
fn tls_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        let mut wrapped = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        while let Some(inner) = wrapped {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(explain(tls));
            }
            wrapped = inner.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        }
        source = e.source();
    }
    None
}

fn explain(error: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let certificate = match error {
        rustls::Error::InvalidCertificate(c) => c,
        other => return format!("{other}"),
    };
    let why = match certificate {
        C::UnknownIssuer => {
            "its certificate is not signed by a CA this process trusts (add the CA to tls.extra_ca_files)".to_owned()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "its certificate is not valid for this host name".to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "its certificate has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => "its certificate is not valid yet".to_owned(),
        C::Revoked => "its certificate is revoked".to_owned(),
        other => format!("its certificate is refused ({other:?})"),
    };
    format!("{why}: {error}")
}

/// `scheme://host:port` of a proxy URL, without user and password.
pub fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => url.rsplit_once('@').map_or(url, |(_, host)| host).to_owned(),
    }
}

fn pem_encode(cert: &CertificateDer<'_>) -> Vec<u8> {
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem.into_bytes()
}

/// The trust bundle git reads, in a directory only this process made and
/// only its user can enter (a shared, guessable path could be prepared by
/// another local user with their own CAs). Removed with the last clone.
struct BundleFile {
    dir: PathBuf,
    path: PathBuf,
}

impl BundleFile {
    fn write(bundle: &[u8]) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("paddock-tls-{}", ulid::Ulid::new().to_string().to_lowercase()));
        // Fails if the name exists: the directory is always a new one of ours.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("ca-bundle.pem");
        std::fs::write(&path, bundle)?;
        Ok(Self { dir, path })
    }
}

impl Drop for BundleFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_credentials_are_not_shown() {
        assert_eq!(without_credentials("http://alice:s3cret@proxy.corp:3128"), "http://proxy.corp:3128");
        assert_eq!(without_credentials("http://proxy.corp:3128"), "http://proxy.corp:3128");
        let outbound = Outbound::new(
            &TlsConfig::default(),
            &OutboundConfig {
                https_proxy: Some(SecretString::from("http://alice:s3cret@proxy.corp:3128".to_owned())),
                no_proxy: vec![],
            },
        )
        .expect("a proxy URL");
        assert!(!format!("{outbound:?}").contains("s3cret"));
    }

    #[test]
    fn git_reads_the_bundle_from_a_private_directory_that_goes_with_the_last_clone() {
        use std::os::unix::fs::PermissionsExt;
        // Any CA will do as the "internal" one: the system bundle's.
        let tls = TlsConfig { extra_ca_files: vec![PathBuf::from("/etc/ssl/certs/ca-certificates.crt")] };
        let outbound = Outbound::new(&tls, &OutboundConfig::default()).expect("the system bundle is PEM");
        let env = outbound.clone().git_env();
        let file = env.iter().find(|(k, _)| k == "GIT_SSL_CAINFO").map(|(_, v)| PathBuf::from(v)).expect("a bundle");
        let dir = file.parent().expect("its directory").to_path_buf();
        let mode = std::fs::metadata(&dir).expect("the directory exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "others could swap the CAs git trusts");
        assert!(std::fs::read(&file).expect("the bundle").starts_with(b"-----BEGIN CERTIFICATE-----"));
        drop(outbound);
        assert!(!dir.exists(), "the bundle outlived every Outbound");
    }

    #[test]
    fn extra_ca_files_that_cannot_be_used_are_refused_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("paddock-outbound-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        for path in [dir.join("missing.pem"), not_pem] {
            let tls = TlsConfig { extra_ca_files: vec![path.clone()] };
            let err = Outbound::new(&tls, &OutboundConfig::default()).unwrap_err().to_string();
            assert!(err.contains("tls.extra_ca_files") && err.contains(&path.display().to_string()), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
