//! The web configuration file of `--web.config.file`, in the format of the
//! Prometheus exporter-toolkit (`docs/web-configuration.md` there), so one
//! file serves every exporter on a node: parsed, checked and turned into
//! [`Settings`] with every path made absolute. Nothing here opens a socket
//! or reads a certificate; [`super::tls`] does that.
//!
//! Differences from exporter-toolkit, each refused with a message rather
//! than accepted and ignored:
//! - `client_auth_type` `RequestClientCert` and `RequireAnyClientCert` take
//!   a client certificate without checking who signed it (anyone can mint
//!   one with an allowed SAN); use `RequireAndVerifyClientCert`.
//! - TLS 1.0 and 1.1 (rustls has neither): `min_version: TLS10` or `TLS11`
//!   means TLS 1.2, the oldest version offered; a `max_version` below 1.2
//!   is an error.
//! - Cipher suites and curves are the ones rustls implements: the AEAD
//!   ECDHE suites, and X25519, P-256 and P-384.
//! - `rate_limit`: `--web.max-requests` already bounds concurrent scrapes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use axum::http::{HeaderName, HeaderValue};
use rustls::SupportedCipherSuite;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::ring::{cipher_suite, kx_group};
use serde::Deserialize;

/// A web configuration file that cannot be used, with what is wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("web config {}: {message}", file.display())]
pub struct WebConfigError {
    /// The file at fault: the web config, or a certificate or key it names.
    pub file: PathBuf,
    /// What is wrong, naming the key.
    pub message: String,
}

impl WebConfigError {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        WebConfigError {
            file: file.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Where PEM text comes from: a file (re-read when it changes) or the web
/// config itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    /// A file, absolute.
    File(PathBuf),
    /// PEM text given inline (`cert`, `key`, `client_ca`).
    Inline(String),
}

/// How the server treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None asked for (`NoClientCert`, the default).
    None,
    /// Asked for; one that is sent must chain to `client_ca_file`
    /// (`VerifyClientCertIfGiven`).
    VerifyIfGiven,
    /// Required, and must chain to `client_ca_file`
    /// (`RequireAndVerifyClientCert`).
    RequireAndVerify,
}

/// A TLS protocol version rustls can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// `tls_server_config`, checked.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The server's certificate chain.
    pub cert: Pem,
    /// The server's private key.
    pub key: Pem,
    /// CAs that sign client certificates.
    pub client_ca: Option<Pem>,
    /// Policy for client certificates.
    pub client_auth: ClientAuth,
    /// A client certificate must carry one of these SANs (DNS name, IP
    /// address, e-mail or URI), exactly; empty means any.
    pub client_allowed_sans: Vec<String>,
    /// Oldest version offered.
    pub min_version: TlsVersion,
    /// Newest version offered.
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in the server's order of preference; empty means
    /// rustls's defaults. TLS 1.3 suites are not configurable, as in Go.
    pub cipher_suites: Vec<SupportedCipherSuite>,
    /// Whether the server's order of `cipher_suites` wins over the client's.
    pub prefer_server_cipher_suites: bool,
    /// Key exchange groups in order of preference; empty means defaults.
    pub curves: Vec<&'static dyn SupportedKxGroup>,
}

/// A web configuration file, checked and ready to build from.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// TLS, when `tls_server_config` is present.
    pub tls: Option<TlsSettings>,
    /// Whether HTTP/2 is offered over TLS (ALPN `h2`).
    pub http2: bool,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `basic_auth_users`: user name to bcrypt hash. Empty: no auth.
    pub users: BTreeMap<String, String>,
}

impl Settings {
    /// Every file the settings read, besides the web config itself: a
    /// change to any of them means a reload.
    pub fn files(&self) -> Vec<PathBuf> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| match p {
                Pem::File(f) => Some(f.clone()),
                Pem::Inline(_) => None,
            })
            .collect()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<RawHeaders>,
}

/// The headers exporter-toolkit allows, and no others.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(rename = "Content-Security-Policy")]
    content_security_policy: Option<String>,
    #[serde(rename = "X-Frame-Options")]
    x_frame_options: Option<String>,
    #[serde(rename = "X-Content-Type-Options")]
    x_content_type_options: Option<String>,
    #[serde(rename = "X-XSS-Protection")]
    x_xss_protection: Option<String>,
    #[serde(rename = "Strict-Transport-Security")]
    strict_transport_security: Option<String>,
}

/// Parses and checks the web config `text` read from `file`; relative
/// paths in it are taken from `file`'s directory.
pub fn parse(file: &Path, text: &str) -> Result<Settings, WebConfigError> {
    let err = |m: String| WebConfigError::new(file, m);
    // An empty file (or one of comments only) is a valid config that turns
    // nothing on, as in exporter-toolkit.
    let raw: RawFile = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        RawFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| err(format!("not a valid web config: {e}")))?
    };
    if raw.rate_limit.is_some() {
        return Err(err(
            "rate_limit is not supported: --web.max-requests bounds concurrent scrapes".into(),
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("/"));
    let http = raw.http_server_config.unwrap_or_default();
    let tls = match raw.tls_server_config {
        Some(t) => tls_settings(t, dir).map_err(err)?,
        None => None,
    };
    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        if user.contains(':') {
            return Err(err(format!(
                "basic_auth_users: user {user:?} contains ':', which basic auth cannot send"
            )));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(err(format!(
                "basic_auth_users: the password of {user:?} is not a bcrypt hash \
                 (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )));
        }
    }
    Ok(Settings {
        tls,
        http2: http.http2.unwrap_or(true),
        headers: headers(http.headers.unwrap_or_default()).map_err(err)?,
        users,
    })
}

/// `None` for a `tls_server_config` that names no certificate, key, client
/// CA or client auth type: exporter-toolkit serves plain HTTP then.
fn tls_settings(t: RawTls, dir: &Path) -> Result<Option<TlsSettings>, String> {
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
    if [
        &t.cert,
        &t.key,
        &t.client_ca,
        &t.cert_file,
        &t.key_file,
        &t.client_ca_file,
        &t.client_auth_type,
    ]
    .into_iter()
    .all(blank)
    {
        return Ok(None);
    }
    let pem = |inline: Option<String>,
               file: Option<String>,
               inline_key: &str,
               file_key: &str|
     -> Result<Option<Pem>, String> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(format!(
                "tls_server_config: {inline_key} and {file_key} are both set; give one"
            )),
            (Some(text), None) => Ok(Some(Pem::Inline(text))),
            (None, Some(f)) if f.trim().is_empty() => Ok(None),
            (None, Some(f)) => Ok(Some(Pem::File(dir.join(f)))),
            (None, None) => Ok(None),
        }
    };
    let cert = pem(t.cert, t.cert_file, "cert", "cert_file")?
        .ok_or("tls_server_config: missing cert_file")?;
    let key =
        pem(t.key, t.key_file, "key", "key_file")?.ok_or("tls_server_config: missing key_file")?;
    let client_ca = pem(t.client_ca, t.client_ca_file, "client_ca", "client_ca_file")?;
    let client_auth = match t.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert") => {
            return Err(format!(
                "tls_server_config: client_auth_type {other} accepts client certificates \
                 nobody vouches for, and is not supported; use RequireAndVerifyClientCert \
                 with client_ca_file"
            ));
        }
        other => {
            return Err(format!(
                "tls_server_config: client_auth_type {other:?} is not one of NoClientCert, \
                 VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ));
        }
    };
    match (client_auth, &client_ca) {
        (ClientAuth::None, Some(_)) => {
            return Err(
                "tls_server_config: client_ca_file is set but client_auth_type is \
                        NoClientCert; set client_auth_type: RequireAndVerifyClientCert"
                    .into(),
            );
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, None) => {
            return Err(
                "tls_server_config: client_auth_type verifies client certificates but \
                 client_ca_file is missing"
                    .into(),
            );
        }
        _ => {}
    }
    let client_allowed_sans = t.client_allowed_sans.unwrap_or_default();
    if !client_allowed_sans.is_empty() && client_auth != ClientAuth::RequireAndVerify {
        return Err(
            "tls_server_config: client_allowed_sans needs client_auth_type: \
             RequireAndVerifyClientCert (otherwise a client without a certificate has no SAN \
             to check)"
                .into(),
        );
    }
    let min_version = version(t.min_version.as_deref(), "min_version", TlsVersion::Tls12)?;
    let max_version = version(t.max_version.as_deref(), "max_version", TlsVersion::Tls13)?;
    if max_version < min_version {
        return Err("tls_server_config: max_version is older than min_version".into());
    }
    let mut cipher_suites = Vec::new();
    for name in t.cipher_suites.unwrap_or_default() {
        if let Some(suite) = cipher(&name)? {
            cipher_suites.push(suite);
        }
    }
    let curves = t
        .curve_preferences
        .unwrap_or_default()
        .iter()
        .map(|c| curve(c))
        .collect::<Result<_, _>>()?;
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        client_allowed_sans,
        min_version,
        max_version,
        cipher_suites,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
        curves,
    }))
}

/// Go's version names; 1.0 and 1.1 (which rustls lacks) as a minimum mean
/// "the oldest there is", and are refused as a maximum.
fn version(name: Option<&str>, key: &str, default: TlsVersion) -> Result<TlsVersion, String> {
    match (name.unwrap_or(""), key) {
        ("", _) => Ok(default),
        ("TLS13", _) => Ok(TlsVersion::Tls13),
        ("TLS12", _) => Ok(TlsVersion::Tls12),
        ("TLS10" | "TLS11", "min_version") => Ok(TlsVersion::Tls12),
        (v @ ("TLS10" | "TLS11"), _) => Err(format!(
            "tls_server_config: {key} {v}: TLS 1.0 and 1.1 are not supported (rustls speaks 1.2 and 1.3)"
        )),
        (v, _) => Err(format!(
            "tls_server_config: {key} {v:?} is not one of TLS10, TLS11, TLS12, TLS13"
        )),
    }
}

/// Go's name of a cipher suite: a TLS 1.2 suite rustls has, `None` for a
/// TLS 1.3 suite (not configurable, as in Go), or an error.
fn cipher(name: &str) -> Result<Option<SupportedCipherSuite>, String> {
    use cipher_suite::*;
    Ok(Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return Ok(None);
        }
        other => {
            return Err(format!(
                "tls_server_config: cipher_suites: {other:?} is not supported; rustls has \
                 TLS_ECDHE_{{ECDSA,RSA}}_WITH_{{AES_128_GCM_SHA256,AES_256_GCM_SHA384,\
                 CHACHA20_POLY1305_SHA256}} (CBC and RSA key exchange suites are left out on purpose)"
            ));
        }
    }))
}

fn curve(name: &str) -> Result<&'static dyn SupportedKxGroup, String> {
    match name {
        "X25519" => Ok(kx_group::X25519),
        "CurveP256" => Ok(kx_group::SECP256R1),
        "CurveP384" => Ok(kx_group::SECP384R1),
        other => Err(format!(
            "tls_server_config: curve_preferences: {other:?} is not supported; use X25519, \
             CurveP256 or CurveP384"
        )),
    }
}

fn headers(h: RawHeaders) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    if let Some(v) = &h.x_frame_options {
        if !["deny", "sameorigin"].contains(&v.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "http_server_config: headers: X-Frame-Options {v:?} is not deny or sameorigin"
            ));
        }
    }
    if let Some(v) = &h.x_content_type_options {
        if !v.eq_ignore_ascii_case("nosniff") {
            return Err(format!(
                "http_server_config: headers: X-Content-Type-Options {v:?} is not nosniff"
            ));
        }
    }
    let named = [
        ("content-security-policy", h.content_security_policy),
        ("x-frame-options", h.x_frame_options),
        ("x-content-type-options", h.x_content_type_options),
        ("x-xss-protection", h.x_xss_protection),
        ("strict-transport-security", h.strict_transport_security),
    ];
    let mut out = Vec::new();
    for (name, value) in named {
        // A blank value leaves the header unset, as documented upstream.
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let value = HeaderValue::from_str(&value).map_err(|_| {
            format!("http_server_config: headers: {name}: {value:?} is not a valid header value")
        })?;
        out.push((HeaderName::from_static(name), value));
    }
    Ok(out)
}

/// Whether a SAN from a client certificate matches an allowed entry: IP
/// addresses compare as addresses (so `::1` matches `0:0:0:0:0:0:0:1`),
/// everything else as exact text, as Go's `VerifyPeerCertificate` in
/// exporter-toolkit does.
pub fn san_allowed(allowed: &[String], san: &str) -> bool {
    let san_ip = san.parse::<IpAddr>().ok();
    allowed.iter().any(|a| match (san_ip, a.parse::<IpAddr>()) {
        (Some(s), Ok(a)) => s == a,
        _ => a == san,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Settings, String> {
        parse(Path::new("/etc/sockdiag/web.yml"), text).map_err(|e| e.to_string())
    }

    fn refused(text: &str) -> String {
        match parsed(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

    #[test]
    fn an_empty_file_turns_nothing_on() {
        for text in [
            "",
            "\n# nothing yet\n",
            "tls_server_config:\n",
            "tls_server_config:\n  min_version: TLS13\n  cert_file: ''\n",
        ] {
            let s = parsed(text).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.tls.is_none() && s.users.is_empty() && s.headers.is_empty());
            assert!(s.http2);
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_files_directory() {
        let s = parsed(
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  \
             client_allowed_sans: [prometheus.example]\n  min_version: TLS13\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let Some(tls) = s.tls else { panic!("no TLS") };
        assert_eq!(
            tls.cert,
            Pem::File(PathBuf::from("/etc/sockdiag/tls/server.crt"))
        );
        assert_eq!(tls.key, Pem::File(PathBuf::from("/abs/server.key")));
        assert_eq!(
            tls.client_ca,
            Some(Pem::File(PathBuf::from("/etc/sockdiag/ca.pem")))
        );
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.max_version, TlsVersion::Tls13);
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerify);
    }

    #[test]
    fn mistakes_are_named() {
        let cases: &[(&str, &str)] = &[
            (
                "tls_server_config:\n  cert_fil: a\n",
                "unknown field `cert_fil`",
            ),
            ("tls_server_config:\n  key_file: k\n", "missing cert_file"),
            ("tls_server_config:\n  cert_file: c\n", "missing key_file"),
            (
                "tls_server_config:\n  cert_file: c\n  cert: x\n  key_file: k\n",
                "cert and cert_file are both set",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
                "nobody vouches for",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Sometimes\n",
                "\"Sometimes\" is not one of",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
                "client_ca_file is set but client_auth_type is NoClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_ca_file is missing",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_allowed_sans: [a]\n",
                "client_allowed_sans needs",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  max_version: TLS11\n",
                "TLS 1.0 and 1.1 are not supported",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n",
                "max_version is older than min_version",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
                "is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  curve_preferences: [CurveP521]\n",
                "CurveP521",
            ),
            (
                "basic_auth_users:\n  alice: hunter2\n",
                "password of \"alice\" is not a bcrypt hash",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "not deny or sameorigin",
            ),
            (
                "http_server_config:\n  headers:\n    Server: me\n",
                "unknown field `Server`",
            ),
            (
                "rate_limit:\n  interval: 1s\n",
                "rate_limit is not supported",
            ),
            ("tls_server_config: [\n", "not a valid web config"),
        ];
        for (text, wanted) in cases {
            let e = refused(text);
            assert!(e.contains(wanted), "{text:?}: {e:?} lacks {wanted:?}");
            assert!(e.contains("/etc/sockdiag/web.yml"), "{e}");
        }
    }

    #[test]
    fn users_suites_curves_and_headers_are_kept() {
        let s = parsed(&format!(
            "basic_auth_users:\n  alice: '{HASH}'\nhttp_server_config:\n  http2: false\n  headers:\n    \
             X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n    \
             X-XSS-Protection: ''\ntls_server_config:\n  cert: PEM\n  key: PEM\n  \
             cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n  \
             curve_preferences: [CurveP256, X25519]\n  prefer_server_cipher_suites: false\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.users.get("alice").map(String::as_str), Some(HASH));
        assert!(!s.http2);
        let names: Vec<_> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-frame-options", "strict-transport-security"]);
        let Some(tls) = s.tls else { panic!("no TLS") };
        assert_eq!(tls.cert, Pem::Inline("PEM".into()));
        assert_eq!(
            tls.cipher_suites.len(),
            1,
            "TLS 1.3 names are not configurable"
        );
        assert_eq!(tls.curves.len(), 2);
        assert!(!tls.prefer_server_cipher_suites);
        assert!(s.users.len() == 1);
    }

    #[test]
    fn sans_match_exactly_and_ips_as_addresses() {
        let allowed = vec!["prometheus.example".to_string(), "::1".to_string()];
        assert!(san_allowed(&allowed, "prometheus.example"));
        assert!(!san_allowed(&allowed, "prometheus.example.evil"));
        assert!(!san_allowed(&allowed, "PROMETHEUS.example.x"));
        assert!(san_allowed(&allowed, "0:0:0:0:0:0:0:1"));
        assert!(!san_allowed(&allowed, "127.0.0.1"));
    }
}
