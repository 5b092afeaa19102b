//! A test CA, minted once per test process with openssl, and a server
//! certificate it signs for `127.0.0.1` and `localhost`: the emulated
//! providers, identity provider and GitHub speak HTTPS with it, and a TLS
//! Redis uses it. Paddock trusts it only through `tls.extra_ca_files`, as a
//! company trusts its internal CA; the operating system does not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TestCa {
    pub dir: PathBuf,
}

impl TestCa {
    /// The process's CA (made on first use).
    pub fn get() -> &'static TestCa {
        static CA: OnceLock<TestCa> = OnceLock::new();
        CA.get_or_init(TestCa::mint)
    }

    /// The CA certificate (PEM): what `tls.extra_ca_files` names.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's certificate chain (leaf, PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// `PADDOCK_TLS__EXTRA_CA_FILES` naming this CA.
    pub fn trust_var(&self) -> (String, String) {
        ("PADDOCK_TLS__EXTRA_CA_FILES".to_owned(), format!(r#"["{}"]"#, self.ca_file().display()))
    }

    /// A rustls server configuration with the server certificate.
    pub fn server_config(&self) -> rustls::ServerConfig {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.cert_file()).expect("server.pem").map(|c| c.expect("a cert")).collect();
        let key = PrivateKeyDer::from_pem_file(self.key_file()).expect("server.key");
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).expect("server config")
    }

    /// An HTTP client of the harness that trusts the CA.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(self.ca_file()).expect("ca.pem");
        let ca = reqwest::Certificate::from_pem(&pem).expect("ca.pem is a certificate");
        reqwest::Client::builder().tls_certs_merge([ca]).build().expect("client")
    }

    fn mint() -> TestCa {
        let dir =
            std::env::temp_dir().join(format!("paddock-test-ca-{}", ulid::Ulid::new().to_string().to_lowercase()));
        std::fs::create_dir_all(&dir).expect("ca dir");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &dir,
            &["req", "-x509"],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3",
                "-subj",
                "/CN=Paddock Test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(&dir, &["req"], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
        // clientAuth too: Redis Cluster nodes present the same certificate
        // to each other on the cluster bus, and check it.
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("server.ext");
        openssl(
            &dir,
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"],
            &[],
            &["-out", "server.pem", "-days", "2", "-extfile", "server.ext"],
        );
        TestCa { dir }
    }
}

fn openssl(dir: &Path, head: &[&str], key: &[&str], tail: &[&str]) {
    let status = Command::new("openssl")
        .args(head)
        .args(key)
        .args(tail)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {head:?} failed");
}

/// The server configuration every HTTPS emulator binds with.
pub fn server_config() -> rustls::ServerConfig {
    static CONFIG: OnceLock<rustls::ServerConfig> = OnceLock::new();
    CONFIG.get_or_init(|| TestCa::get().server_config()).clone()
}

/// Paddock's outbound settings trusting the test CA (no proxy).
pub fn trusting_outbound() -> platform::outbound::Outbound {
    let tls = common::config::TlsConfig { extra_ca_files: vec![TestCa::get().ca_file()] };
    platform::outbound::Outbound::new(&tls, &Default::default()).expect("the test CA is usable")
}
