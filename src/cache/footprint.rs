//! What a cache holds once full, in bytes, from its settings and the model's shape alone (no
//! cache is allocated): its keys and values plus its policy's profile (the attention rows it
//! keeps to score from: MorphKV's window of rows, TOVA's last row, SnapKV's observation
//! window). And the other way round: the largest budget whose bytes fit a given size, so that
//! policies can be compared at equal memory. Also the parser of byte sizes (`16MiB`).
//!
//! The figures are exactly [`KvCache::kv_bytes`](super::KvCache::kv_bytes) and
//! [`KvCache::profile_bytes`](super::KvCache::profile_bytes) of a cache of these settings
//! holding `budget` tokens per KV head (tests check it against real caches). Per-slot
//! records (positions, H2O's accumulated attention, scores) are not counted there, so not
//! here either.

use serde::Serialize;

use super::config::CacheConfig;
use super::limits;
use super::shape::Shape;
use crate::error::{Error, Result};

/// A cache's bytes: keys and values, and the policy's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Bytes {
    pub kv: usize,
    pub profile: usize,
}

impl Bytes {
    /// Keys and values plus profile.
    pub fn total(&self) -> usize {
        self.kv.saturating_add(self.profile)
    }
}

impl CacheConfig {
    /// Bytes of a cache of these settings for a model of `shape` (keys and values stored as
    /// `self.kv_type`) holding `self.budget` tokens per KV head: what
    /// [`KvCache::kv_bytes`](super::KvCache::kv_bytes) and
    /// [`KvCache::profile_bytes`](super::KvCache::profile_bytes) say once it is full.
    /// Saturates instead of overflowing.
    pub fn bytes_at(&self, shape: &Shape) -> Bytes {
        let tokens = self.budget;
        let per_token = [2, self.kv_type.row_bytes(shape.head_dim), shape.n_kv_head]
            .iter()
            .fold(shape.n_layer, |a, &b| a.saturating_mul(b));
        let rows = self.build_policy().needs().rows;
        // The ring: rows of every query head (or KV head) over the retained slots, per layer.
        let heads = self.profile.row_heads(shape.n_head, shape.n_kv_head);
        let per_slot = [self.profile.value_bytes(), heads, rows]
            .iter()
            .fold(shape.n_layer, |a, &b| a.saturating_mul(b));
        Bytes {
            kv: per_token.saturating_mul(tokens),
            profile: per_slot.saturating_mul(tokens),
        }
    }

    /// The smallest budget these settings allow (window + sinks + 1 for a policy that
    /// evicts).
    pub fn min_budget(&self) -> usize {
        let floor = self.effective_window() + self.sinks() + 1;
        floor.max(limits::BUDGET.min)
    }

    /// The largest budget at which these settings' cache (see [`CacheConfig::bytes_at`])
    /// takes at most `bytes`, searched over the budgets they allow (bytes grow with the
    /// budget). Errors, naming `flag`, when even the smallest budget takes more, or when the
    /// policy never evicts (its bytes follow the conversation, not the budget).
    pub fn budget_for_bytes(&self, shape: &Shape, bytes: usize, flag: &str) -> Result<usize> {
        let name = self.policy.name();
        let policy = self.build_policy();
        if !policy.evicts(super::Phase::Decode) && !policy.evicts(super::Phase::Prefill) {
            return Err(Error::arg(
                flag,
                format!("{name} never evicts: no budget bounds its bytes"),
            ));
        }
        let at = |budget: usize| {
            Self {
                budget,
                ..self.clone()
            }
            .bytes_at(shape)
            .total()
        };
        let (mut lo, mut hi) = (self.min_budget(), limits::BUDGET.max);
        if lo > hi || at(lo) > bytes {
            return Err(Error::arg(
                flag,
                format!(
                    "{} is too small for {name}: its smallest budget, {lo} (window {} + sinks {} + 1), takes {}",
                    format_bytes(bytes),
                    self.effective_window(),
                    self.sinks(),
                    format_bytes(at(lo))
                ),
            ));
        }
        // Invariant: at(lo) fits; the answer lies in lo..=hi.
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if at(mid) <= bytes {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }
}

/// Parses a byte size: a whole or decimal number with an optional unit, `B`, `KB`/`MB`/`GB`
/// (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024), case-insensitive, a space allowed
/// before it (`16MiB`, `1.5MB`, `37368000`). Rounds down to whole bytes; the error says what
/// is wrong (for a clap value parser, which names the flag and the value).
pub fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "`{s}` is not a byte size: the unit `{unit}` is not B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("`{s}` is not a byte size (e.g. 16MiB, 1.5MB, 4000000)"))?;
    let bytes = (value * scale).floor();
    // Budgets stop at 2^20 tokens; sizes past 2^50 bytes are a typo.
    const MAX: f64 = (1u64 << 50) as f64;
    if !(1.0..=MAX).contains(&bytes) {
        return Err(format!(
            "`{s}` is out of range: a byte size must be between 1 B and 1 PiB"
        ));
    }
    Ok(bytes as usize)
}

/// A byte count for people: `35.6 MiB (37368000 B)`, or just `512 B`.
pub fn format_bytes(b: usize) -> String {
    const UNITS: [(&str, f64); 3] = [
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("KiB", 1024.0),
    ];
    UNITS
        .iter()
        .find(|(_, s)| b as f64 >= *s)
        .map_or(format!("{b} B"), |(u, s)| {
            format!("{:.2} {u} ({b} B)", b as f64 / s)
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::cache::{KvType, PolicyKind, POLICIES};
    use crate::model::{Config, Model};
    use crate::session::Session;

    fn shape() -> Shape {
        Shape::from(&Config::tiny())
    }

    fn cfg(policy: PolicyKind, budget: usize) -> CacheConfig {
        CacheConfig {
            policy,
            budget,
            window: Some(5),
            prefill_chunk: 8,
            ..CacheConfig::default()
        }
    }

    /// The formula equals a real cache's bytes once it is full, for every policy and KV
    /// type, after a prompt prefilled in chunks and tokens decoded one at a time (a
    /// random-weight model; Q8_0's blocks need a head of 32).
    #[test]
    fn bytes_at_equals_a_full_cache() {
        for kv_type in KvType::ALL {
            let config = match kv_type {
                KvType::Q8_0 => Config {
                    head_dim: 32,
                    hidden: 128,
                    ..Config::tiny()
                },
                _ => Config::tiny(),
            };
            bytes_at_equals_a_full_cache_of(kv_type, config);
        }
    }

    fn bytes_at_equals_a_full_cache_of(kv_type: KvType, config: Config) {
        let shape = Shape::from(&config);
        let model = Model::random(config, 5, &Device::Cpu).unwrap();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 90) as u32 + 1).collect();
        for name in POLICIES {
            let policy: PolicyKind = name.parse().unwrap();
            for budget in [12, 17, 30] {
                let c = CacheConfig {
                    kv_type,
                    ..cfg(policy, budget)
                };
                let mut s = Session::greedy(&model, c.clone()).unwrap();
                s.prefill(&prompt).unwrap();
                // SnapKV compresses prompts only: compare right after the prefill.
                if policy != PolicyKind::SnapKv {
                    for i in 0..20 {
                        s.feed(i % 50 + 3).unwrap();
                    }
                }
                let cache = s.cache();
                let held = cache.retained();
                let want = Bytes {
                    kv: cache.kv_bytes(),
                    profile: cache.profile_bytes(),
                };
                // `full` keeps everything: compare at the tokens it holds.
                let got = CacheConfig {
                    budget: held,
                    ..c.clone()
                }
                .bytes_at(&shape);
                assert_eq!(got, want, "{name} b{budget} {kv_type}");
                if policy != PolicyKind::Full {
                    assert_eq!(held, budget, "{name} full at its budget");
                }
                let profiled = ["morphkv", "tova", "snapkv"].contains(&name);
                assert_eq!(want.profile > 0, profiled, "{name}");
            }
        }
    }

    /// The budget found is the largest that fits: one more token does not.
    #[test]
    fn budget_for_bytes_is_the_largest_that_fits() {
        let sh = shape();
        for name in POLICIES.iter().filter(|&&n| n != "full") {
            let base = cfg(name.parse().unwrap(), 1);
            let at = |b: usize| {
                CacheConfig {
                    budget: b,
                    ..base.clone()
                }
                .bytes_at(&sh)
                .total()
            };
            for bytes in [at(base.min_budget()), 100_000, 1 << 20, 3_333_333] {
                let b = base.budget_for_bytes(&sh, bytes, "--x").unwrap();
                assert!(at(b) <= bytes, "{name} {bytes}");
                assert!(at(b + 1) > bytes, "{name} {bytes}: {b} + 1 fits too");
            }
            // Too small for the smallest budget: a clear error, naming the flag and policy.
            let err = base
                .budget_for_bytes(&sh, at(base.min_budget()) - 1, "--x")
                .unwrap_err()
                .to_string();
            assert!(err.contains("--x") && err.contains("too small") && err.contains(name));
        }
        let err = CacheConfig::full()
            .budget_for_bytes(&sh, 1 << 20, "--x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("never evicts"), "{err}");
    }

    #[test]
    fn byte_sizes_parse_with_units() {
        assert_eq!(parse_bytes("37368000"), Ok(37_368_000));
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("8 mib"), Ok(8 << 20));
        assert_eq!(parse_bytes("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_bytes("2KiB"), Ok(2048));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("10B"), Ok(10));
        for bad in ["", "MiB", "12x", "1.2.3MB", "-5", "0", "0.1", "9999999PB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(16 << 20), "16.00 MiB (16777216 B)");
    }
}
