//! Basic auth against `basic_auth_users` (bcrypt hashes), with verified
//! answers cached so a scrape every 15 s does not pay a bcrypt (tens of
//! milliseconds at cost 10) each time.
//!
//! The cache is keyed by a SHA-256 of user, hash and password, so no
//! password is kept in memory, and a changed hash in a reloaded file misses
//! the cache. Wrong passwords are cached too: a client retrying the same
//! wrong password costs one bcrypt, not one per request. A client trying
//! new passwords pays a bcrypt each, at most two at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use base64::Engine;
use tokio::sync::Semaphore;

/// The most remembered answers; past it the cache starts over. A handful
/// of scrapers fit many times over.
const CACHE_ENTRIES: usize = 1024;

/// bcrypt runs at once, at most: each takes a core for tens of
/// milliseconds, and the blocking threads also render scrapes.
const CONCURRENT_BCRYPTS: usize = 2;

/// A well-formed bcrypt hash of a random string, checked for unknown users
/// so that their answer takes as long as a known user's.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DSmV4G7XuaD3ZXR8Y0Yb6";

/// The users of one web config and what is known of their passwords.
#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    cache: Mutex<HashMap<[u8; 32], bool>>,
    bcrypts: Arc<Semaphore>,
}

/// What a request's credentials are worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A known user with the right password.
    Allowed,
    /// No credentials, malformed ones, an unknown user or a wrong password.
    Denied,
}

impl BasicAuth {
    /// Auth for `users` (user name to bcrypt hash, already checked).
    pub fn new(users: BTreeMap<String, String>) -> Self {
        BasicAuth {
            users,
            cache: Mutex::new(HashMap::new()),
            bcrypts: Arc::new(Semaphore::new(CONCURRENT_BCRYPTS)),
        }
    }

    /// The users and their hashes.
    pub fn users(&self) -> &BTreeMap<String, String> {
        &self.users
    }

    /// The verdict on an `Authorization` header (or its absence).
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Verdict {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Verdict::Denied;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (DUMMY_HASH.to_string(), false),
        };
        let key = cache_key(&user, &hash, &password);
        if let Some(ok) = self.cache_get(&key) {
            return verdict(ok && known);
        }
        let Ok(_permit) = self.bcrypts.clone().acquire_owned().await else {
            return Verdict::Denied;
        };
        // Another request may have verified the same credentials meanwhile.
        if let Some(ok) = self.cache_get(&key) {
            return verdict(ok && known);
        }
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if known {
            self.cache_put(key, ok);
        }
        verdict(ok && known)
    }

    fn cache_get(&self, key: &[u8; 32]) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).copied()
    }

    fn cache_put(&self, key: [u8; 32], ok: bool) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, ok);
    }
}

fn verdict(ok: bool) -> Verdict {
    if ok {
        Verdict::Allowed
    } else {
        Verdict::Denied
    }
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Lengths first, so no two triples run together into the same bytes.
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// User and password from `Basic base64(user:password)`.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or(HeaderValue::from_static(""))
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            panic!("runtime")
        };
        rt.block_on(f)
    }

    #[test]
    fn only_the_right_password_passes_and_answers_are_cached() {
        let Ok(hash) = bcrypt::hash("s3cret", 4) else {
            panic!("hashing")
        };
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)]));
        run(async {
            assert_eq!(auth.check(None).await, Verdict::Denied);
            assert_eq!(
                auth.check(Some(&header("prom", "s3cret"))).await,
                Verdict::Allowed
            );
            assert_eq!(
                auth.check(Some(&header("prom", "wrong"))).await,
                Verdict::Denied
            );
            assert_eq!(
                auth.check(Some(&header("other", "s3cret"))).await,
                Verdict::Denied
            );
            assert_eq!(
                auth.check(Some(&HeaderValue::from_static("Bearer abc")))
                    .await,
                Verdict::Denied
            );
            assert_eq!(
                auth.check(Some(&HeaderValue::from_static("Basic !!!")))
                    .await,
                Verdict::Denied
            );
            // Right and wrong answers of the known user are remembered;
            // unknown users are not, so they cannot fill the cache.
            assert_eq!(auth.cache.lock().map(|c| c.len()).unwrap_or(0), 2);
            assert_eq!(
                auth.check(Some(&header("prom", "s3cret"))).await,
                Verdict::Allowed
            );
        });
    }

    #[test]
    fn the_dummy_hash_is_a_bcrypt_hash() {
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
        // Well formed enough that verifying runs the whole bcrypt.
        assert_eq!(bcrypt::verify("guess", DUMMY_HASH).ok(), Some(false));
    }

    #[test]
    fn a_password_may_contain_colons() {
        assert_eq!(
            credentials(&header("u", "a:b")),
            Some(("u".to_string(), "a:b".to_string()))
        );
    }
}
