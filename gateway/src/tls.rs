//! `wss://` on the gateway: a second listener (TLS_LISTEN_ADDR) with the certificate chain and key
//! from TLS_CERT_FILE and TLS_KEY_FILE (PEM; on Kubernetes a `kubernetes.io/tls` Secret mounted
//! as files). The certificate is chosen per handshake from what was last loaded, and the files are
//! checked every TLS_RELOAD_SECS: a renewed certificate (cert-manager, a rotated Secret) is used
//! for new connections without a restart; open ones keep theirs. A pair that does not load (a
//! half-written file, a key that does not match) is refused with a log line and the previous one
//! stays in use. Plain `ws://` on LISTEN_ADDR stays as it is.

use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The certificate in use, swapped when the files change.
#[derive(Debug)]
pub struct Certs {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// Loads a certificate chain and its private key from PEM files.
pub fn load(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| anyhow::anyhow!("TLS_CERT_FILE {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("TLS_CERT_FILE {}: {e}", cert_file.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "TLS_CERT_FILE {} holds no certificate",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("TLS_KEY_FILE {}: {e}", key_file.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("TLS_KEY_FILE {}: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| anyhow::anyhow!("the key does not belong to the certificate: {e}"))?;
    Ok(ck)
}

impl Certs {
    pub fn open(cert_file: PathBuf, key_file: PathBuf) -> anyhow::Result<Arc<Self>> {
        let ck = load(&cert_file, &key_file)?;
        Ok(Arc::new(Certs {
            current: ArcSwap::from_pointee(ck),
            cert_file,
            key_file,
        }))
    }

    fn stamp(&self) -> Option<(SystemTime, SystemTime, u64, u64)> {
        let c = std::fs::metadata(&self.cert_file).ok()?;
        let k = std::fs::metadata(&self.key_file).ok()?;
        Some((c.modified().ok()?, k.modified().ok()?, c.len(), k.len()))
    }

    /// Loads the files again; true if the new pair is in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let ck = load(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }

    /// The leaf certificate in use (DER), for tests and logs.
    pub fn leaf(&self) -> Vec<u8> {
        self.current.load().cert[0].to_vec()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Watches the files and reloads the certificate when they change.
pub struct Reloader {
    pub certs: Arc<Certs>,
    pub every: Duration,
    pub metrics: prometheus::IntCounterVec,
}

#[async_trait::async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = self.certs.stamp();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = self.certs.stamp();
            if now == seen {
                continue;
            }
            match self.certs.reload() {
                Ok(()) => {
                    seen = now;
                    self.metrics.with_label_values(&["ok"]).inc();
                    tracing::info!(cert = %self.certs.cert_file.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    // Keep serving the previous pair; try again on the next change (or tick, if
                    // the files are still being written).
                    self.metrics.with_label_values(&["failed"]).inc();
                    tracing::error!(error = %format!("{e:#}"), "TLS certificate not reloaded; keeping the previous one");
                }
            }
        }
    }
}

/// The TLS settings of the `wss://` listener, choosing the certificate from `certs`.
pub fn settings(certs: Arc<Certs>) -> anyhow::Result<pingora::listeners::tls::TlsSettings> {
    let mut s = pingora::listeners::tls::TlsSettings::intermediate("", "")
        .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    s.set_cert_resolver(certs);
    Ok(s)
}
