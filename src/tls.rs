//! TLS on both listeners (rustls): the certificate and key from files, optionally a CA that client
//! certificates must chain to (mutual TLS), and all of them read again when the files change, so a
//! rotated Kubernetes Secret is served without a restart.
//!
//! Each listener keeps its `ServerConfig` in an `ArcSwap`; every accepted connection takes the
//! current one. A watcher compares the files' modification times and sizes every
//! `reload_interval_ms` and swaps in a new config when they change; a set of files that does not
//! load (a key that does not match, a half-written file) is logged and the old config kept.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// `[tls]`: both listeners speak TLS when `cert_file` and `key_file` are set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// With it, every client must present a certificate that chains to these CAs (PEM).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a change.
    #[serde(default = "reload_interval_ms")]
    pub reload_interval_ms: u64,
}

fn reload_interval_ms() -> u64 {
    2_000
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self { cert_file: None, key_file: None, client_ca_file: None, reload_interval_ms: reload_interval_ms() }
    }
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// The first key that is wrong, with why (for `Config::validate`).
    pub fn invalid(&self) -> Option<(String, String)> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Some(("key_file".into(), "cert_file needs its key_file".into())),
            (None, Some(_)) => Some(("cert_file".into(), "key_file needs its cert_file".into())),
            (None, None) if self.client_ca_file.is_some() => {
                Some(("client_ca_file".into(), "client certificates need TLS: set cert_file and key_file".into()))
            }
            _ if self.reload_interval_ms == 0 => Some(("reload_interval_ms".into(), "must be greater than 0".into())),
            _ => None,
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        [&self.cert_file, &self.key_file, &self.client_ca_file].into_iter().flatten().cloned().collect()
    }
}

/// One listener's TLS: the current config, replaced when the files change.
pub struct Certificates {
    current: ArcSwap<ServerConfig>,
    settings: TlsSettings,
    /// The protocols this listener offers in ALPN (`h2` for gRPC, `http/1.1` for REST).
    alpn: Vec<Vec<u8>>,
}

impl Certificates {
    /// Loads the files now (an error names the file and stops the start) and watches them.
    pub fn load(settings: &TlsSettings, alpn: &[&[u8]]) -> anyhow::Result<Arc<Self>> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = server_config(settings, &alpn)?;
        let certificates = Arc::new(Self { current: ArcSwap::from_pointee(config), settings: settings.clone(), alpn });
        let watched = Arc::downgrade(&certificates);
        tokio::spawn(watch(watched, settings.clone()));
        Ok(certificates)
    }

    /// An acceptor with the current certificate, for one connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    fn reload(&self) {
        match server_config(&self.settings, &self.alpn) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "ok").increment(1);
                tracing::info!(files = ?self.settings.files(), "TLS certificate reloaded");
            }
            Err(error) => {
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "failed").increment(1);
                tracing::error!(
                    error = format!("{error:#}"),
                    "TLS files changed but do not load; serving the previous ones"
                )
            }
        }
    }
}

/// Every `reload_interval_ms`, reloads when a file's modification time or size changed; ends with
/// the listener.
async fn watch(certificates: Weak<Certificates>, settings: TlsSettings) {
    let stamp = |settings: &TlsSettings| -> Vec<Option<(SystemTime, u64)>> {
        let stamp = |p: &PathBuf| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        settings.files().iter().map(stamp).collect()
    };
    let mut last = stamp(&settings);
    let mut every = tokio::time::interval(Duration::from_millis(settings.reload_interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(certificates) = certificates.upgrade() else { return };
        let now = stamp(&settings);
        if now != last {
            certificates.reload();
            last = now;
        }
    }
}

fn server_config(settings: &TlsSettings, alpn: &[Vec<u8>]) -> anyhow::Result<ServerConfig> {
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        anyhow::bail!("tls needs cert_file and key_file");
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .with_context(|| format!("reading tls.cert_file {}", cert_file.display()))?;
    anyhow::ensure!(!chain.is_empty(), "tls.cert_file {} holds no certificate", cert_file.display());
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading tls.key_file {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca_file)
                .with_context(|| format!("reading tls.client_ca_file {}", ca_file.display()))?
            {
                let certificate =
                    certificate.with_context(|| format!("reading tls.client_ca_file {}", ca_file.display()))?;
                roots.add(certificate).with_context(|| format!("tls.client_ca_file {}", ca_file.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("tls.client_ca_file {}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .with_context(|| format!("tls.key_file {} does not match tls.cert_file", key_file.display()))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}
