//! Bounds of every numeric cache setting, whichever source it comes from (a flag,
//! `config.toml`, a preset, `/set`), and the memory a cache of given settings takes before
//! its first token.

/// The range one setting may take.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// The setting's name in `config.toml`, presets and `/set` (flags add `--`).
    pub name: &'static str,
    pub min: usize,
    pub max: usize,
}

impl Limit {
    /// `v` if it is in range, else a sentence saying the range.
    pub fn check(&self, v: usize) -> Result<usize, String> {
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "{v} is out of range: {} must be between {} and {}",
                self.name, self.min, self.max
            ))
        }
    }

    /// Parses a whole number and checks it (for flags and `/set`).
    pub fn parse(&self, s: &str) -> Result<usize, String> {
        let v = s
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("`{s}` is not a whole number"))?;
        self.check(v)
    }
}

/// Tokens kept per KV head (2^20: 1M tokens, far past any trained context).
pub const BUDGET: Limit = Limit {
    name: "budget",
    min: 1,
    max: 1 << 20,
};
/// Most recent tokens always kept.
pub const WINDOW: Limit = Limit {
    name: "window",
    min: 1,
    max: 1 << 20,
};
/// Per cent of the budget kept for the most recent tokens.
pub const RECENT: Limit = Limit {
    name: "recent",
    min: 0,
    max: 100,
};
/// MorphKV: per cent weight of each slot's accumulated attention in its score (100: the
/// accumulated sum counts as much as the window's scores).
pub const HISTORY: Limit = Limit {
    name: "history",
    min: 0,
    max: 1000,
};
/// MorphKV: half-life of each slot's accumulated attention, in tokens (0: it never fades).
pub const HALF_LIFE: Limit = Limit {
    name: "half-life",
    min: 0,
    max: 1 << 20,
};
/// First tokens always kept.
pub const SINKS: Limit = Limit {
    name: "sinks",
    min: 0,
    max: 1 << 20,
};
/// Tokens evicted at once.
pub const EVICT_EVERY: Limit = Limit {
    name: "evict-every",
    min: 1,
    max: 1 << 20,
};
/// Prompt tokens per forward pass (the attention of a chunk is chunk × cache wide).
pub const PREFILL_CHUNK: Limit = Limit {
    name: "prefill-chunk",
    min: 1,
    max: 1 << 16,
};

/// Physical memory of this machine in bytes, where the OS says (Linux).
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// serde's `deserialize_with` for an optional bounded setting: out of range is an error at
/// the value's position (TOML reports its line and column).
fn bounded<'de, D: serde::Deserializer<'de>>(
    d: D,
    limit: Limit,
) -> Result<Option<usize>, D::Error> {
    let v = <usize as serde::Deserialize>::deserialize(d)?;
    limit.check(v).map(Some).map_err(serde::de::Error::custom)
}

/// [`BUDGET`] for serde (`#[serde(default, deserialize_with = "...")]`).
pub fn deserialize_budget<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    bounded(d, BUDGET)
}

/// [`WINDOW`] for serde.
pub fn deserialize_window<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    bounded(d, WINDOW)
}

/// [`RECENT`] for serde.
pub fn deserialize_recent<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    bounded(d, RECENT)
}

/// `history` in `config.toml`, checked against [`HISTORY`].
pub fn deserialize_history<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    bounded(d, HISTORY)
}

/// `half_life` in `config.toml`, checked against [`HALF_LIFE`].
pub fn deserialize_half_life<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    bounded(d, HALF_LIFE)
}

/// Checks that a cache of `cap` slots per KV head in every layer of `model` (K and V, the
/// per-slot records, and a profile of `ring_rows` rows stored as `ring_type`) fits in this machine's memory: the
/// error names `--budget` and says what the cache would need.
pub(super) fn check_first_allocation(
    model: &super::Shape,
    (cap, budget, prefill_chunk): (usize, usize, usize),
    ring: (usize, super::ProfileType),
    kv: super::KvType,
) -> crate::error::Result<()> {
    use crate::error::Error;
    let bytes = first_allocation(model, cap, ring, kv);
    let total = total_memory();
    if let (Some(total), Some(bytes)) = (total, bytes) {
        if bytes > total {
            return Err(Error::arg(
                "--budget",
                format!(
                    "a cache of {} slots per KV head ({} budget + {} prefill chunk) needs {:.1} GiB for this model, more than this machine's {:.1} GiB: lower --budget or --prefill-chunk",
                    cap,
                    budget,
                    prefill_chunk,
                    bytes as f64 / f64::from(1u32 << 30),
                    total as f64 / f64::from(1u32 << 30)
                ),
            ));
        }
    } else if bytes.is_none() {
        return Err(Error::arg("--budget", "the cache would not fit in memory"));
    }
    Ok(())
}

/// Bytes a cache of `cap` slots per KV head takes in all layers: K and V, the per-slot
/// records, and the profile's ring. None if the product overflows.
fn first_allocation(
    model: &super::Shape,
    cap: usize,
    (ring_rows, ring_type): (usize, super::ProfileType),
    kv: super::KvType,
) -> Option<u64> {
    let kv = model
        .n_kv_head
        .checked_mul(2 * kv.row_bytes(model.head_dim))?;
    let records = model.n_kv_head.checked_mul(16)?;
    let ring = ring_type
        .row_heads(model.n_head, model.n_kv_head)
        .checked_mul(ring_rows)?
        .checked_mul(ring_type.value_bytes())?;
    let per_slot = kv.checked_add(records)?.checked_add(ring)?;
    let bytes = per_slot.checked_mul(cap)?.checked_mul(model.n_layer)?;
    u64::try_from(bytes).ok()
}
