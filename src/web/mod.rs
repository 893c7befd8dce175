//! `--web.config.file`: TLS, client certificates, basic auth and response
//! headers in the Prometheus exporter-toolkit format ([`config`]), turned
//! into a rustls configuration ([`tls`]) and an authenticator ([`auth`]).
//!
//! [`WebConfig`] watches the file and every certificate and key it names:
//! each new connection and each request asks for the [`Active`]
//! configuration, which costs a `stat` of each file, and a change rebuilds
//! it. So a renewed certificate is served from the next handshake without a
//! restart (exporter-toolkit re-reads on every request for the same reason).
//! A file that fails to load later keeps the last good configuration in
//! service, says so in the log once per change, and in
//! `sockdiag_web_config_last_reload_successful`.

pub mod auth;
pub mod config;
pub mod guard;
pub mod handshake;
pub mod tls;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderName, HeaderValue};

pub use auth::{BasicAuth, Verdict};
pub use config::{Settings, WebConfigError};

/// The configuration in service.
#[derive(Debug)]
pub struct Active {
    /// TLS for new connections, when the server speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic auth for every request, when users are configured.
    pub auth: Option<Arc<BasicAuth>>,
    /// Headers added to every response.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Active {
    /// No TLS, no auth, no extra headers: serving without a web config.
    pub fn plain() -> Arc<Active> {
        Arc::new(Active {
            tls: None,
            auth: None,
            headers: Arc::new([]),
        })
    }
}

/// What identifies one version of a file: replaced, rewritten or touched,
/// one of these changes. `None` when the file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, u64, i64, i64, i64, i64)>);

impl Stamp {
    /// Follows symlinks, so a Kubernetes Secret's `..data` swap counts.
    fn of(path: &Path) -> Stamp {
        Stamp(std::fs::metadata(path).ok().map(|m| {
            (
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        }))
    }
}

struct State {
    active: Arc<Active>,
    /// The web config and the files the last parsed version of it names.
    watched: Vec<PathBuf>,
    /// Their stamps when last loaded (or tried).
    seen: Vec<Stamp>,
}

/// How the web config fares, for the metrics page.
#[derive(Debug, Clone, Copy)]
pub struct WebStatus {
    /// Whether the last load attempt succeeded (the first always did).
    pub last_reload_ok: bool,
    /// Unix time of the last successful load.
    pub last_success_unix: f64,
    /// Requests refused for missing or wrong credentials.
    pub unauthorized: u64,
    /// Connections that did not complete a TLS handshake.
    pub handshake_failures: u64,
}

/// The web config file, watched.
pub struct WebConfig {
    path: PathBuf,
    /// Whether the server started with TLS; fixed for its life, since the
    /// listening sockets were set up for it.
    tls: bool,
    /// `http2` as at start: ALPN is offered per handshake, but the choice
    /// cannot change on the fly, as in exporter-toolkit.
    http2: bool,
    state: Mutex<State>,
    last_ok: AtomicBool,
    last_success_unix_bits: AtomicU64,
    unauthorized: AtomicU64,
    handshake_failures: AtomicU64,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("tls", &self.tls)
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

impl WebConfig {
    /// Loads `path` for the first time: any problem is an error.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let before = Stamp::of(&path);
        let settings = read(&path)?;
        let mut watched = vec![path.clone()];
        watched.extend(settings.files());
        let mut seen = vec![before];
        seen.extend(watched[1..].iter().map(|p| Stamp::of(p)));
        let active = build(&path, &settings, settings.http2, None)?;
        Ok(WebConfig {
            tls: active.tls.is_some(),
            http2: settings.http2,
            path,
            state: Mutex::new(State {
                active: Arc::new(active),
                watched,
                seen,
            }),
            last_ok: AtomicBool::new(true),
            last_success_unix_bits: AtomicU64::new(now_unix().to_bits()),
            unauthorized: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        })
    }

    /// Whether connections are TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The file being watched.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration to use now: reloaded first if any watched file
    /// changed since the last look.
    pub fn current(&self) -> Arc<Active> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now: Vec<Stamp> = state.watched.iter().map(|p| Stamp::of(p)).collect();
        if now == state.seen {
            return state.active.clone();
        }
        // Stamps are taken before reading, so a write that lands while we
        // read is seen as one more change next time.
        let config_stamp = now[0].clone();
        match read(&self.path).and_then(|settings| {
            let mut watched = vec![self.path.clone()];
            watched.extend(settings.files());
            let mut seen = vec![config_stamp.clone()];
            seen.extend(watched[1..].iter().map(|p| Stamp::of(p)));
            state.watched = watched;
            state.seen = seen;
            self.rebuild(&settings, &state.active)
        }) {
            Ok(active) => {
                tracing::info!(file = %self.path.display(), "web config reloaded");
                state.active = Arc::new(active);
                self.last_ok.store(true, Ordering::Relaxed);
                self.last_success_unix_bits
                    .store(now_unix().to_bits(), Ordering::Relaxed);
            }
            Err(e) => {
                if state.seen.len() != now.len() || state.seen[0] != config_stamp {
                    // The file itself could not be read or parsed: watch
                    // what was watched, with today's stamps.
                    state.seen = now;
                }
                tracing::warn!(error = %e, "web config not reloaded; serving with the last good one");
                self.last_ok.store(false, Ordering::Relaxed);
            }
        }
        state.active.clone()
    }

    fn rebuild(&self, settings: &Settings, old: &Active) -> Result<Active, WebConfigError> {
        if settings.tls.is_some() != self.tls {
            return Err(WebConfigError::new(
                &self.path,
                "switching between plain HTTP and TLS needs a restart",
            ));
        }
        if settings.http2 != self.http2 {
            tracing::warn!(
                file = %self.path.display(),
                http2 = self.http2,
                "http_server_config.http2 cannot change without a restart; keeping it"
            );
        }
        build(&self.path, settings, self.http2, old.auth.as_ref())
    }

    /// Counts a request refused by basic auth.
    pub fn count_unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection whose TLS handshake failed.
    pub fn count_handshake_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// How reloads, auth and handshakes went.
    pub fn status(&self) -> WebStatus {
        WebStatus {
            last_reload_ok: self.last_ok.load(Ordering::Relaxed),
            last_success_unix: f64::from_bits(self.last_success_unix_bits.load(Ordering::Relaxed)),
            unauthorized: self.unauthorized.load(Ordering::Relaxed),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
        }
    }
}

fn read(path: &Path) -> Result<Settings, WebConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| WebConfigError::new(path, format!("cannot read it: {e}")))?;
    config::parse(path, &text)
}

/// The configuration `settings` describe; `old_auth` is kept (with its
/// cache of verified passwords) when the users did not change.
fn build(
    path: &Path,
    settings: &Settings,
    http2: bool,
    old_auth: Option<&Arc<BasicAuth>>,
) -> Result<Active, WebConfigError> {
    let tls = settings
        .tls
        .as_ref()
        .map(|t| tls::server_config(path, t, http2))
        .transpose()?;
    let auth = if settings.users.is_empty() {
        None
    } else {
        match old_auth {
            Some(a) if a.users() == &settings.users => Some(a.clone()),
            _ => Some(Arc::new(BasicAuth::new(settings.users.clone()))),
        }
    };
    Ok(Active {
        tls,
        auth,
        headers: settings.headers.clone().into(),
    })
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Err(e) = std::fs::write(path, text) {
            panic!("writing {}: {e}", path.display());
        }
    }

    #[test]
    fn a_bad_reload_keeps_the_last_good_config() {
        let dir = std::env::temp_dir().join(format!("sockdiag-web-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("web.yml");
        let Ok(hash) = bcrypt::hash("pw", 4) else {
            panic!("hash")
        };
        write(&file, &format!("basic_auth_users:\n  prom: '{hash}'\n"));
        let web = match WebConfig::load(&file) {
            Ok(w) => w,
            Err(e) => panic!("{e}"),
        };
        let first = web.current();
        assert!(first.auth.is_some() && !web.tls());
        assert!(
            Arc::ptr_eq(&first, &web.current()),
            "unchanged: same config"
        );

        write(&file, "basic_auth_users:\n  prom: not-a-hash-at-all\n");
        let kept = web.current();
        assert!(Arc::ptr_eq(&first, &kept), "a bad file keeps the old one");
        assert!(!web.status().last_reload_ok);

        write(
            &file,
            "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
        );
        let next = web.current();
        assert!(next.auth.is_none() && next.headers.len() == 1);
        assert!(web.status().last_reload_ok);

        write(
            &file,
            "tls_server_config:\n  cert_file: a.pem\n  key_file: b.pem\n",
        );
        assert!(Arc::ptr_eq(&next, &web.current()), "TLS needs a restart");
        assert!(!web.status().last_reload_ok);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_file_at_start_is_an_error() {
        let Err(e) = WebConfig::load(Path::new("/nonexistent/web.yml")) else {
            panic!("loaded a missing file")
        };
        assert!(
            e.to_string()
                .contains("/nonexistent/web.yml: cannot read it"),
            "{e}"
        );
    }
}
