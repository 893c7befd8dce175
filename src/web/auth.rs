//! Basic auth against `basic_auth_users` (bcrypt hashes), with verified
//! answers cached so a scrape every 15 s does not pay a bcrypt (tens of
//! milliseconds at cost 10) each time.
//!
//! The cache is keyed by a SHA-256 of user, hash and password, so no
//! password is kept in memory, and a changed hash in a reloaded file misses
//! the cache. Wrong passwords are cached too, unknown users' included: a
//! client retrying the same wrong credentials costs one bcrypt, not one per
//! request, and takes as long for an unknown user as for a known one, so
//! timing tells nothing about who exists. Right and wrong answers are kept
//! apart: a client guessing passwords fills and flushes only the cache of
//! wrong ones, never the scrapers' accepted credentials. Each guess pays a
//! bcrypt, at most two at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use base64::Engine;
use tokio::sync::Semaphore;

/// The most remembered answers of each kind; past it that cache starts
/// over. A handful of scrapers fit many times over.
const CACHE_ENTRIES: usize = 1024;

/// bcrypt runs at once, at most: each takes a core for tens of
/// milliseconds, and the blocking threads also render scrapes.
const CONCURRENT_BCRYPTS: usize = 2;

/// A well-formed bcrypt hash that no password is known to match, checked
/// for unknown users so that their answer takes as long as a known
/// user's; its cost (`10`) is replaced by the highest of the configured
/// users'.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DSmV4G7XuaD3ZXR8Y0Yb6";

/// The users of one web config and what is known of their passwords.
#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// [`DUMMY_HASH`] at the users' highest cost.
    dummy: String,
    accepted: Mutex<HashMap<[u8; 32], ()>>,
    refused: Mutex<HashMap<[u8; 32], ()>>,
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
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(10);
        // "$2y$10$" + salt and hash: the cost is the two digits at 4..6.
        let dummy = format!("{}{cost:02}{}", &DUMMY_HASH[..4], &DUMMY_HASH[6..]);
        BasicAuth {
            users,
            dummy,
            accepted: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
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
            None => (self.dummy.clone(), false),
        };
        let key = cache_key(&user, &hash, &password);
        if let Some(ok) = self.cached(&key) {
            return verdict(ok && known);
        }
        let Ok(_permit) = self.bcrypts.clone().acquire_owned().await else {
            return Verdict::Denied;
        };
        // Another request may have verified the same credentials meanwhile.
        if let Some(ok) = self.cached(&key) {
            return verdict(ok && known);
        }
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
            && known;
        self.remember(key, ok);
        verdict(ok)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        let lock = |m: &Mutex<HashMap<[u8; 32], ()>>| {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(key)
        };
        if lock(&self.accepted) {
            Some(true)
        } else if lock(&self.refused) {
            Some(false)
        } else {
            None
        }
    }

    fn remember(&self, key: [u8; 32], ok: bool) {
        let cache = if ok { &self.accepted } else { &self.refused };
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, ());
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
            // Right and wrong answers are remembered apart, an unknown
            // user's too (so a retry takes as long as a known user's).
            assert_eq!(auth.accepted.lock().map(|c| c.len()).unwrap_or(0), 1);
            assert_eq!(auth.refused.lock().map(|c| c.len()).unwrap_or(0), 2);
            assert_eq!(
                auth.check(Some(&header("prom", "s3cret"))).await,
                Verdict::Allowed
            );
        });
    }

    #[test]
    fn unknown_users_are_checked_at_the_users_highest_cost() {
        let Ok(hash) = bcrypt::hash("x", 5) else {
            panic!("hashing")
        };
        let auth = BasicAuth::new(BTreeMap::from([("a".to_string(), hash)]));
        assert!(auth.dummy.starts_with("$2y$05$"), "{}", auth.dummy);
        assert_eq!(auth.dummy.len(), DUMMY_HASH.len());
        assert!(auth.dummy.parse::<bcrypt::HashParts>().is_ok());
    }

    #[test]
    fn guessing_never_flushes_accepted_credentials() {
        let Ok(hash) = bcrypt::hash("right", 4) else {
            panic!("hashing")
        };
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)]));
        run(async {
            assert_eq!(
                auth.check(Some(&header("prom", "right"))).await,
                Verdict::Allowed
            );
            for i in 0..CACHE_ENTRIES + 5 {
                auth.remember(cache_key("prom", "h", &i.to_string()), false);
            }
            assert_eq!(auth.accepted.lock().map(|c| c.len()).unwrap_or(0), 1);
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
