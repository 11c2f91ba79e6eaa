//! TLS material: a self-signed CA generated on first start, a serving certificate for the
//! loopback names signed by it, and the bearer token; all kept in the data directory (0600,
//! [`crate::private`]).

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
use crate::private;
use crate::token::Token;

/// The CA, the serving certificate and key (PEM), and the bearer token.
#[derive(Clone)]
pub struct Material {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: Token,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

impl Material {
    /// New CA, serving certificate (localhost, 127.0.0.1, ::1) and token.
    pub fn generate() -> Result<Material, Error> {
        let ca_key = KeyPair::generate().map_err(tls_err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "pier-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(tls_err)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(tls_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "pier-apiserver");
        let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
        Ok(Material {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            token: Token::generate(),
        })
    }

    /// Load from `dir`, generating and storing on first start. A token file someone shortened
    /// is refused rather than served.
    pub fn load_or_create(dir: &Path) -> Result<Material, Error> {
        let files = ["ca.crt", "server.crt", "server.key", "token"];
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        if files.iter().all(|f| dir.join(f).exists()) {
            let get = |f: &str| read(f).map_err(|e| Error::io(dir.join(f), e));
            return Ok(Material {
                ca_pem: get("ca.crt")?,
                cert_pem: get("server.crt")?,
                key_pem: get("server.key")?,
                token: Token::parse(&get("token")?, &dir.join("token").display().to_string())?,
            });
        }
        let m = Material::generate()?;
        for (f, content) in files
            .iter()
            .zip([&m.ca_pem, &m.cert_pem, &m.key_pem, m.token.as_str()])
        {
            private::write_file(&dir.join(f), content)?;
        }
        Ok(m)
    }

    /// A rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(tls_err)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(tls_err)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Material::load_or_create(dir.path()).expect("generate");
        let b = Material::load_or_create(dir.path()).expect("load");
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.token, b.token);
        assert_eq!(a.token.as_str().len(), 64);
        assert!(a.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        b.server_config().expect("rustls accepts it");
    }

    #[test]
    fn a_short_token_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Material::load_or_create(dir.path()).expect("generate");
        std::fs::write(dir.path().join("token"), "hunter2\n").expect("shorten");
        let e = Material::load_or_create(dir.path()).expect_err("refused");
        assert!(e.to_string().contains("has 7 bytes; at least 32"), "{e}");
    }
}
