//! The randomized tests' generator and seed: a seed printed with every run
//! and taken back from an environment variable replays the same mix.

use std::fmt;
use std::time::SystemTime;

/// xorshift64: tiny, and the same seed gives the same mix on any machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 once, so that small or similar seeds still start far
        // apart, and never zero (a fixed point of xorshift).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.next() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.range(0, v.len() as u64 - 1) as usize]
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.range(0, i as u64) as usize;
            v.swap(i, j);
        }
    }
}

/// A test's seed and the variable that replays it; shown as `VAR=seed`.
#[derive(Debug, Clone, Copy)]
pub struct Seed {
    pub var: &'static str,
    pub value: u64,
}

impl Seed {
    /// The seed in `var` (decimal, or hex after `0x`), else a fresh one from
    /// the clock and the pid; printed with how to replay it with
    /// `cargo test --test <test>`.
    pub fn from_env(var: &'static str, test: &str) -> Seed {
        // An empty value counts as unset, as CI templates often export one.
        let value = match std::env::var(var).map(|v| v.trim().to_string()) {
            Ok(text) if !text.is_empty() => {
                let parsed = match text.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => text.parse(),
                };
                parsed.unwrap_or_else(|e| panic!("{var}={text:?} is not a u64: {e}"))
            }
            _ => {
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_nanos() as u64;
                nanos ^ (u64::from(std::process::id()) << 32)
            }
        };
        let seed = Seed { var, value };
        println!(
            "{} seed {value} (replay: {seed} cargo test --test {test})",
            test.replace('_', " ")
        );
        seed
    }

    pub fn rng(&self) -> Rng {
        Rng::new(self.value)
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.var, self.value)
    }
}
