//! TLS for herald's NATS connections: one rustls client configuration, built from the
//! `--nats-tls-*` files, used by both the NATS client and the interest connection, so
//! both trust the same roots and present the same client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The TLS files given for NATS. Empty: TLS only where a URL says `tls://` or the server
/// requires it, trusting the system's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM file of the CA certificates that sign the servers' certificates (instead of the
    /// system's roots).
    pub ca: Option<PathBuf>,
    /// PEM files of the client certificate (chain) and its private key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl NatsTls {
    /// Whether any file was given: then every NATS connection must use TLS.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The client configuration: the CA file's roots (or the system's), and the client
    /// certificate when one is given. Errors name the file, never its contents.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                let shown = path.display();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("--nats-tls-ca {shown}: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--nats-tls-ca {shown}: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("--nats-tls-ca {shown}: no certificate in it"));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--nats-tls-ca {shown}: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                if let Some(e) = found.errors.first() {
                    tracing::warn!(error = %e, "reading the system's CA certificates");
                }
                roots.add_parsable_certificates(found.certs);
            }
        }
        // ring explicitly: the process-wide default provider is only chosen when exactly
        // one provider is compiled in, which herald does not control.
        let builder = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| format!("--nats-tls-cert {}: {e}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--nats-tls-cert {}: {e}", cert.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "--nats-tls-cert {}: no certificate in it",
                        cert.display()
                    ));
                }
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--nats-tls-key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("--nats-tls-cert and --nats-tls-key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err("--nats-tls-cert needs --nats-tls-key".into()),
            (None, Some(_)) => return Err("--nats-tls-key needs --nats-tls-cert".into()),
        };
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("herald-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let tls = NatsTls {
            ca: Some(empty.clone()),
            ..Default::default()
        };
        let e = tls.client_config().unwrap_err();
        assert!(
            e.contains("--nats-tls-ca") && e.contains("empty.pem"),
            "{e}"
        );
        let missing = NatsTls {
            ca: Some(dir.join("missing.pem")),
            ..Default::default()
        };
        assert!(missing.client_config().unwrap_err().contains("missing.pem"));
        let half = NatsTls {
            cert: Some(empty),
            ..Default::default()
        };
        assert!(half.client_config().unwrap_err().contains("--nats-tls-key"));
        assert!(!NatsTls::default().is_set());
    }
}
