//! Token buckets for RateLimitPolicy rules: one global bucket, or one per key
//! in a fixed-size, lock-free table. Keys are hashed with a per-process
//! secret and the table recycles its least recently used slots, so neither
//! spoofed keys nor collisions can grow memory.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderName;

use super::authz::Pattern;
use super::clock::now_ms;

/// Bucket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSettings {
    /// Capacity.
    pub max_tokens: u32,
    /// Tokens added per fill.
    pub tokens_per_fill: u32,
    /// Milliseconds between fills.
    pub fill_interval_ms: u64,
}

/// What a bucket said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// A token was taken.
    pub allowed: bool,
    /// Tokens left.
    pub remaining: u32,
    /// Milliseconds until the next fill.
    pub reset_ms: u64,
}

/// What a rule keys its buckets by.
#[derive(Debug, Clone)]
pub enum KeyKind {
    /// One bucket.
    Global,
    /// The TCP peer's IP.
    SourceIp,
    /// The original client's IP.
    RemoteIp,
    /// A header's value.
    Header(HeaderName),
    /// The path.
    Path,
}

/// A compiled rule with its buckets.
#[derive(Debug)]
pub struct RateLimiter {
    /// `namespace/name[rule]`.
    pub name: String,
    /// Paths the rule counts (empty: all).
    pub paths: Vec<Pattern>,
    /// Methods the rule counts (empty: all).
    pub methods: Vec<String>,
    /// Key.
    pub key: KeyKind,
    /// Bucket settings.
    pub bucket: BucketSettings,
    table: BucketTable,
}

impl RateLimiter {
    /// A rule with a table of `max_keys` buckets (one for global rules).
    pub fn new(
        name: String,
        paths: Vec<Pattern>,
        methods: Vec<String>,
        key: KeyKind,
        bucket: BucketSettings,
        max_keys: usize,
    ) -> Self {
        let slots = Self::slots(&key, max_keys);
        Self {
            name,
            paths,
            methods,
            key,
            bucket,
            table: BucketTable::new(slots),
        }
    }

    /// The buckets a table for `key` and `max_keys` holds: one for a
    /// global rule, else `max_keys` rounded up to a power of two.
    pub fn slots(key: &KeyKind, max_keys: usize) -> usize {
        if matches!(key, KeyKind::Global) {
            1
        } else {
            max_keys.max(1).next_power_of_two()
        }
    }

    /// Whether the rule counts a request.
    pub fn applies(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }

    /// Takes a token from the bucket of `key` (ignored for global rules).
    pub fn take(&self, key: &[u8]) -> Verdict {
        let hash = match self.key {
            KeyKind::Global => 1,
            _ => self.table.hasher.hash_one(key).max(1),
        };
        self.table.take(hash, &self.bucket, now_ms())
    }
}

struct Slot {
    key: AtomicU64,
    /// tokens << 32 | last fill (ms, truncated); 0 = a fresh, full bucket.
    state: AtomicU64,
}

struct BucketTable {
    slots: Box<[Slot]>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for BucketTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketTable({} slots)", self.slots.len())
    }
}

const PROBES: usize = 8;

fn pack(tokens: u32, at: u64) -> u64 {
    (u64::from(tokens) << 32) | (at & 0xffff_ffff).max(1)
}

impl BucketTable {
    fn new(slots: usize) -> Self {
        let slots = (0..slots)
            .map(|_| Slot {
                key: AtomicU64::new(0),
                state: AtomicU64::new(0),
            })
            .collect();
        Self {
            slots,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn slot_for(&self, hash: u64) -> &Slot {
        let mask = self.slots.len() - 1;
        let start = hash as usize & mask;
        let probe = |i: usize| &self.slots[(start + i) & mask];
        for i in 0..PROBES.min(self.slots.len()) {
            let slot = probe(i);
            match slot.key.load(Ordering::Acquire) {
                k if k == hash => return slot,
                0 if slot
                    .key
                    .compare_exchange(0, hash, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
                {
                    return slot;
                }
                _ => {}
            }
        }
        // Full around here: recycle the least recently filled slot.
        let victim = (0..PROBES.min(self.slots.len()))
            .map(probe)
            .min_by_key(|s| s.state.load(Ordering::Relaxed) & 0xffff_ffff)
            .unwrap_or_else(|| probe(0));
        victim.key.store(hash, Ordering::Release);
        victim.state.store(0, Ordering::Release);
        victim
    }

    fn take(&self, hash: u64, bucket: &BucketSettings, now: u64) -> Verdict {
        let slot = self.slot_for(hash);
        let interval = bucket.fill_interval_ms.max(1);
        let now32 = now & 0xffff_ffff;
        let mut current = slot.state.load(Ordering::Acquire);
        loop {
            let (mut tokens, mut last) = if current == 0 {
                (bucket.max_tokens, now32)
            } else {
                ((current >> 32) as u32, current & 0xffff_ffff)
            };
            let elapsed = now32.wrapping_sub(last) & 0xffff_ffff;
            let fills = elapsed / interval;
            if fills > 0 {
                let added = fills.saturating_mul(u64::from(bucket.tokens_per_fill));
                tokens = (u64::from(tokens) + added).min(u64::from(bucket.max_tokens)) as u32;
                last = (last + fills * interval) & 0xffff_ffff;
            }
            let reset_ms = interval - (now32.wrapping_sub(last) & 0xffff_ffff).min(interval - 1);
            let allowed = tokens > 0;
            let left = if allowed { tokens - 1 } else { 0 };
            match slot.state.compare_exchange_weak(
                current,
                pack(left, last),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Verdict {
                        allowed,
                        remaining: left,
                        reset_ms,
                    };
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// Seconds for a `retry-after` / `x-ratelimit-reset` header (at least 1).
pub fn whole_seconds(ms: u64) -> u64 {
    Duration::from_millis(ms).as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: u32) -> BucketSettings {
        BucketSettings {
            max_tokens: max,
            tokens_per_fill: max,
            fill_interval_ms: 1000,
        }
    }

    #[test]
    fn a_bucket_empties_then_refills() {
        let table = BucketTable::new(16);
        let s = settings(3);
        let remaining: Vec<(bool, u32)> = (0..4)
            .map(|_| table.take(7, &s, 10_000))
            .map(|v| (v.allowed, v.remaining))
            .collect();
        assert_eq!(remaining, vec![(true, 2), (true, 1), (true, 0), (false, 0)]);
        let denied = table.take(7, &s, 10_400);
        assert!(!denied.allowed);
        assert_eq!(denied.reset_ms, 600);
        assert!(
            table.take(7, &s, 11_000).allowed,
            "refilled after the interval"
        );
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let table = BucketTable::new(16);
        let s = settings(1);
        assert!(table.take(1, &s, 5000).allowed);
        assert!(!table.take(1, &s, 5000).allowed);
        assert!(table.take(2, &s, 5000).allowed);
    }

    #[test]
    fn the_table_stays_bounded() {
        let table = BucketTable::new(8);
        let s = settings(1);
        for key in 1..10_000u64 {
            table.take(key, &s, 5000);
        }
        assert_eq!(table.slots.len(), 8);
        assert!(
            table.take(20_000, &s, 5000).allowed,
            "a new key still gets a bucket"
        );
    }
}
