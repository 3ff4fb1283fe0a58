//! TLS on the HTTP listener (`https`, `wss`): rustls with ring, the
//! certificate read from `http.tls_cert`/`http.tls_key` at start and read
//! again on SIGHUP (certbot renews in place and signals), without dropping
//! a connection. A renewed pair that does not load is refused with a log
//! line, and the one in use stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::ingest::{TlsSetupError, crypto_provider};

/// The certificate in use, replaceable while the listener runs.
#[derive(Debug)]
pub struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsSetupError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsSetupError::Certificate {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::Certificate {
            path: cert.display().to_string(),
            message: "no certificate in the file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let signing = crypto_provider().key_provider.load_private_key(key_der)?;
    let certified = CertifiedKey::new(chain, signing);
    // A key that does not belong to the certificate is refused here, not
    // at the first handshake.
    certified.keys_match()?;
    Ok(certified)
}

impl ReloadableCert {
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsSetupError> {
        Ok(ReloadableCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(load(cert, key)?)),
        })
    }

    /// Reads the files again; on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let fresh = load(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// The rustls configuration of the listener: HTTP/1.1 over TLS 1.2 or
    /// 1.3 (browsers and proxies), this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_reloads_and_keeps_the_old_pair_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::generate(dir.path(), &["localhost".into()]).unwrap();
        let cert = dir.path().join("relay.crt");
        let key = dir.path().join("relay.key");
        let reloadable = Arc::new(ReloadableCert::new(&cert, &key).unwrap());
        reloadable.server_config().unwrap();
        let before = reloadable.current.read().cert.clone();
        // Renewed in place (a new key and certificate): reload picks it up.
        crate::certs::generate(dir.path(), &["localhost".into()]).unwrap();
        reloadable.reload().unwrap();
        assert_ne!(reloadable.current.read().cert, before);
        // A broken renewal: refused, and the pair in use stays.
        let in_use = reloadable.current.read().cert.clone();
        std::fs::write(&key, "not a key").unwrap();
        assert!(reloadable.reload().is_err());
        assert_eq!(reloadable.current.read().cert, in_use);
        // A key of another certificate is refused at load.
        let other = tempfile::tempdir().unwrap();
        crate::certs::generate(other.path(), &["localhost".into()]).unwrap();
        assert!(ReloadableCert::new(&cert, &other.path().join("relay.key")).is_err());
    }
}
