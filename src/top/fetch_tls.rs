//! TLS for `top --from https://...`: the client side of what
//! `--web.config.file` serves, with rustls like the server. The daemon's
//! certificate is checked against `--from.ca-file` (or the system's CA
//! bundle), and a client certificate is sent when the daemon requires one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::web::tls::{pem_certificates, pem_private_key};

/// Where the system keeps its CA bundle, by distribution family.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// What `top --from` needs to speak TLS, from its flags.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CAs that may sign the daemon's certificate; the system bundle when
    /// `None`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain), for a daemon that requires one.
    pub cert_file: Option<PathBuf>,
    /// Its private key.
    pub key_file: Option<PathBuf>,
    /// The name to check the daemon's certificate against, when the URL
    /// names the daemon by another (an IP address, a tunnel's localhost).
    pub server_name: Option<String>,
}

/// A ready TLS client configuration and the name to verify.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// Overrides the URL's host for verification.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads the files `options` name; an error names the file and what is
    /// wrong with it.
    pub fn new(options: &TlsOptions) -> Result<ClientTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let bundle = match &options.ca_file {
            Some(file) => file.clone(),
            None => SYSTEM_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| {
                    "https: no system CA bundle found; give the CA that signed the daemon's \
                     certificate with --from.ca-file"
                        .to_string()
                })?,
        };
        let certs = certificates(&bundle)?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "{}: no usable CA certificate in it",
                bundle.display()
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("https: {e}"))?
            .with_root_certificates(roots);
        let mut config = match (&options.cert_file, &options.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = private_key(key)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!("--from.key-file does not go with --from.cert-file: {e}")
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--from.cert-file and --from.key-file go together".to_string()),
        };
        // One request per connection, read to the end: HTTP/1.1 framing
        // is all `fetch` speaks.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: options.server_name.clone(),
        })
    }

    /// The name to verify for `host`.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_string())
            .map_err(|_| format!("{name:?} is not a name a certificate can carry"))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    pem_certificates(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    pem_private_key(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}
