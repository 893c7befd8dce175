//! Maps keyed by socket cookie, hashed cheaply.
//!
//! The fast tier looks every listener up by cookie several times per
//! sample, and the standard SipHash made that a quarter of a unix pass.
//! SipHash guards against keys chosen to collide; cookies are not chosen
//! by anyone but the kernel, which hands them out from a counter, so a
//! multiplicative hash spreads them as well and costs a multiplication.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by socket cookie.
pub type CookieMap<V> = HashMap<u64, V, BuildHasherDefault<CookieHasher>>;

/// Fibonacci hashing of one `u64`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CookieHasher(u64);

impl Hasher for CookieHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u64 keys; fold any other input in anyway.
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // The high bits of the product are the best mixed, and hashbrown
        // takes its control bits from the top and its index from the
        // bottom: swapping the halves gives both well-mixed bits.
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_cookies_spread_over_buckets() {
        let mut m: CookieMap<u64> = CookieMap::default();
        for c in 4096..4096 + 10_000u64 {
            m.insert(c, c);
        }
        assert_eq!(m.len(), 10_000);
        assert!((4096..4096 + 10_000u64).all(|c| m.get(&c) == Some(&c)));
        // Low bits of the hashes of consecutive cookies differ.
        let h = |c: u64| {
            let mut h = CookieHasher::default();
            h.write_u64(c);
            h.finish() & 0xff
        };
        let distinct: std::collections::HashSet<u64> = (0..256).map(h).collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
    }
}
