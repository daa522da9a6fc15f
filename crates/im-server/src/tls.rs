//! TLS on the main listener: a certificate and key from PEM files, offered with ALPN `h2` and
//! `http/1.1`, and loaded again when the files change or on SIGHUP, so a renewed
//! certificate is served without a restart while open streams stay open. Also the
//! self-signed certificate that makes a local HTTPS demo one command (`--self-signed`).
//!
//! Browsers speak HTTP/2 only over TLS, and over HTTP/1.1 they open at most six connections
//! to an origin, each tab's event stream holding one; with HTTP/2 every tab's stream shares
//! one connection.

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

/// Why a certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls cannot use it.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The self-signed certificate could not be made or saved.
    #[error("making a self-signed certificate: {0}")]
    SelfSigned(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The TLS side of the listener: the acceptor and the certificate it serves.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Reloading>,
}

impl Tls {
    /// Loads `cert` and `key` (PEM) and builds an acceptor that offers h2 and http/1.1.
    pub(crate) fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(&provider, cert, key)?;
        let certs = Arc::new(Reloading {
            current: RwLock::new(Arc::new(loaded)),
            cert: cert.to_owned(),
            key: key.to_owned(),
            seen: Mutex::new(stamp(cert, key)),
            provider: provider.clone(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
        })
    }

    /// The acceptor for new connections.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Checks the files every `every` and on SIGHUP, and serves their new contents to new
    /// connections; a file that fails to load is logged and the old certificate kept. Stops
    /// once this `Tls` is dropped.
    pub(crate) fn spawn_reloader(&self, every: Duration) {
        let certs = Arc::downgrade(&self.certs);
        tokio::spawn(reload_loop(certs, every));
    }
}

async fn reload_loop(certs: Weak<Reloading>, every: Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let forced = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        #[cfg(not(unix))]
        let forced = {
            tokio::time::sleep(every).await;
            false
        };
        let Some(certs) = certs.upgrade() else {
            return;
        };
        certs.reload(forced);
    }
}

/// The certificate in force, and where it comes from.
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
    cert: PathBuf,
    key: PathBuf,
    /// The files' modification times and sizes when last loaded (or tried).
    seen: Mutex<Stamp>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl Reloading {
    /// Loads the files again if they changed since last time, or if `forced`.
    fn reload(&self, forced: bool) {
        let now = stamp(&self.cert, &self.key);
        {
            let mut seen = self.seen.lock();
            if !forced && *seen == now {
                return;
            }
            // A failed load is not retried until the files change again (or SIGHUP): a
            // certificate written before its key loads once both are in place.
            *seen = now;
        }
        match load(&self.provider, &self.cert, &self.key) {
            Ok(loaded) => {
                *self.current.write() = Arc::new(loaded);
                tracing::info!(cert = %self.cert.display(), "TLS certificate loaded again");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; the old one stays")
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// What identifies a version of the two files without reading them.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |p: &Path| {
        let meta = std::fs::metadata(p).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [of(cert), of(key)]
}

/// Reads a certificate chain and its private key, and checks that they belong together.
fn load(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE in the file".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let key_error = |reason: String| TlsError::Key {
        path: key.to_owned(),
        reason,
    };
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(key_error(e.to_string())),
    }
}

/// The certificate and key of `--self-signed`, made in `dir` on first use (valid for
/// `localhost`, `127.0.0.1` and `::1`) and reused after, so a browser's exception holds
/// across restarts. Returns the certificate's and the key's paths.
pub fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let err = |e: &dyn std::fmt::Display| TlsError::SelfSigned(e.to_string());
    let names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| err(&e))?;
    std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes()).map_err(|e| err(&e))?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| err(&e))?;
    Ok((cert, key))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_loads_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path()).unwrap();
        let first = std::fs::read(&cert).unwrap();
        assert!(Tls::new(&cert, &key).is_ok());
        let (again, _) = self_signed(dir.path()).unwrap();
        assert_eq!(std::fs::read(again).unwrap(), first);
    }

    #[test]
    fn bad_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&dir.path().join("a")).unwrap();
        let (_, other_key) = self_signed(&dir.path().join("b")).unwrap();
        let missing = dir.path().join("missing.pem");
        let e = Tls::new(&missing, &key).err().unwrap();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem").unwrap();
        assert!(Tls::new(&garbage, &key).is_err());
        assert!(Tls::new(&cert, &garbage).is_err());
        let e = Tls::new(&cert, &other_key).err().unwrap();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
    }

    #[test]
    fn a_changed_file_is_loaded_again_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&dir.path().join("a")).unwrap();
        let (cert_b, key_b) = self_signed(&dir.path().join("b")).unwrap();
        let tls = Tls::new(&cert, &key).unwrap();
        let served = || tls.certs.current.read().cert[0].clone();
        let first = served();
        // A mismatched pair (the new certificate before its key) keeps the old one.
        std::fs::copy(&cert_b, &cert).unwrap();
        tls.certs.reload(true);
        assert_eq!(served(), first);
        std::fs::copy(&key_b, &key).unwrap();
        tls.certs.reload(false);
        assert_ne!(served(), first);
        let want = CertificateDer::pem_file_iter(&cert_b)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(served(), want);
    }
}
