//! Builds the rustls server configuration from checked [`TlsSettings`]:
//! reads the certificate, key and client CA files, and wraps the client
//! certificate check with the `client_allowed_sans` rule.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::config::{ClientAuth, Pem, TlsSettings, TlsVersion, WebConfigError, san_allowed};

/// The rustls configuration for `settings`; `config` names the web config
/// for errors about inline PEM, and `http2` adds `h2` to ALPN.
pub fn server_config(
    config: &Path,
    settings: &TlsSettings,
    http2: bool,
) -> Result<Arc<ServerConfig>, WebConfigError> {
    let certs = certificates(config, &settings.cert, "cert_file")?;
    let key = private_key(config, &settings.key)?;

    let mut provider = rustls::crypto::ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        // The configured list orders and limits the TLS 1.2 suites; TLS 1.3
        // suites all stay, as Go keeps them.
        let tls13 = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied();
        provider.cipher_suites = tls13
            .chain(settings.cipher_suites.iter().copied())
            .collect();
    }
    if !settings.curves.is_empty() {
        provider.kx_groups = settings.curves.clone();
    }
    let provider = Arc::new(provider);

    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();

    let fail = |e: rustls::Error| WebConfigError::new(config, format!("tls_server_config: {e}"));
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(fail)?;
    let builder = match (&settings.client_ca, settings.client_auth) {
        (Some(ca), ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(config, ca, "client_ca_file")? {
                roots.add(cert).map_err(|e| {
                    WebConfigError::new(
                        pem_file(config, ca),
                        format!("client_ca_file: not a usable CA certificate: {e}"),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.client_auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| {
                WebConfigError::new(
                    pem_file(config, ca),
                    format!("client_ca_file: cannot verify clients with it: {e}"),
                )
            })?;
            let verifier: Arc<dyn ClientCertVerifier> = if settings.client_allowed_sans.is_empty() {
                verifier
            } else {
                Arc::new(AllowedSans {
                    inner: verifier,
                    allowed: settings.client_allowed_sans.clone(),
                })
            };
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        WebConfigError::new(
            pem_file(config, &settings.key),
            format!("key_file does not go with cert_file: {e}"),
        )
    })?;
    server.ignore_client_order = settings.prefer_server_cipher_suites;
    server.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(server))
}

/// The file a PEM came from, or the web config for inline PEM.
fn pem_file<'a>(config: &'a Path, pem: &'a Pem) -> &'a Path {
    match pem {
        Pem::File(f) => f,
        Pem::Inline(_) => config,
    }
}

fn pem_bytes(pem: &Pem) -> Result<Vec<u8>, WebConfigError> {
    match pem {
        Pem::File(f) => {
            std::fs::read(f).map_err(|e| WebConfigError::new(f, format!("cannot read it: {e}")))
        }
        Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
    }
}

fn certificates(
    config: &Path,
    pem: &Pem,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let bytes = pem_bytes(pem)?;
    pem_certificates(&bytes)
        .map_err(|e| WebConfigError::new(pem_file(config, pem), format!("{key}: {e}")))
}

/// The certificates of PEM text, in order; at least one, or why not.
/// `top --from`'s client reads its files with it too.
pub fn pem_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in it".to_string());
    }
    Ok(certs)
}

/// The private key of PEM text, or why there is none usable.
pub fn pem_private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| format!("no usable private key in it: {e}"))
}

fn private_key(config: &Path, pem: &Pem) -> Result<PrivateKeyDer<'static>, WebConfigError> {
    let bytes = pem_bytes(pem)?;
    pem_private_key(&bytes)
        .map_err(|e| WebConfigError::new(pem_file(config, pem), format!("key_file: {e}")))
}

/// A client verifier that, after the chain checks out, also wants one of
/// the certificate's SANs on the allowed list.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// The SANs of a DER certificate as text: DNS names, e-mail addresses,
/// URIs and IP addresses.
fn sans(cert: &CertificateDer<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let ext = parsed.subject_alternative_name().ok()??;
    Some(
        ext.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some((*s).to_string())
                }
                GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::Ipv4Addr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
    )
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = sans(end_entity).unwrap_or_default();
        if sans.iter().any(|s| san_allowed(&self.allowed, s)) {
            Ok(verified)
        } else {
            tracing::debug!(?sans, "client certificate has no allowed SAN");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_read_from_a_certificate() {
        let Ok(mut params) = rcgen::CertificateParams::new(vec!["prometheus.example".to_string()])
        else {
            panic!("params")
        };
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            "::1"
                .parse()
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        ));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@example.org"
                .try_into()
                .unwrap_or_else(|_| panic!("ia5")),
        ));
        let (Ok(key), true) = (rcgen::KeyPair::generate(), true) else {
            panic!("key")
        };
        let Ok(cert) = params.self_signed(&key) else {
            panic!("cert")
        };
        let der = CertificateDer::from(cert.der().to_vec());
        assert_eq!(
            sans(&der),
            Some(vec![
                "prometheus.example".to_string(),
                "::1".to_string(),
                "ops@example.org".to_string()
            ])
        );
    }
}
