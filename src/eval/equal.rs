//! Policies at equal memory (`eval --equal-bytes`): each cache setting's budget is the largest
//! whose bytes once full, keys and values plus the policy's profile (MorphKV's ring of
//! attention rows counts against it), fit a byte size; the fidelity figures then come per
//! byte size, for the comparison a user choosing a policy needs.

use serde::{Deserialize, Serialize};

use super::{Fidelity, Variant};
use crate::cache::{format_bytes, Bytes, CacheConfig, Phase, Shape};

/// One cache setting sized to one byte size.
#[derive(Debug, Clone)]
pub struct Sized {
    /// The byte size asked for.
    pub bytes: usize,
    /// The setting at the budget found.
    pub variant: Variant,
    /// Its bytes once full, from the formula.
    pub footprint: Bytes,
}

/// Sizes every setting in `templates` (their budgets are ignored) to every byte size in
/// `sizes` for a model of `shape`, in the order byte size, then setting. Returns the sized
/// settings and one note per setting left out: too small a size for its smallest budget, or
/// a policy whose cache the budget does not bound while decoding (`full`; `snapkv`, which
/// only compresses prompts, so on a teacher-forced text it keeps every token). `flag` names
/// the sizes' origin in the notes.
pub fn size(
    templates: &[CacheConfig],
    sizes: &[usize],
    shape: &Shape,
    flag: &str,
) -> (Vec<Sized>, Vec<String>) {
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    let bounded: Vec<&CacheConfig> = templates
        .iter()
        .filter(|c| {
            let ok = c.build_policy().evicts(Phase::Decode);
            if !ok {
                notes.push(format!(
                    "{}: left out of {flag}: its cache keeps every decoded token, so no budget bounds its bytes on a text fed token by token",
                    c.policy.name()
                ));
            }
            ok
        })
        .collect();
    for &bytes in sizes {
        for &c in &bounded {
            match c.budget_for_bytes(shape, bytes, flag) {
                Ok(budget) => {
                    let cache = CacheConfig {
                        budget,
                        ..c.clone()
                    };
                    let footprint = cache.bytes_at(shape);
                    out.push(Sized {
                        bytes,
                        variant: Variant::new(cache),
                        footprint,
                    });
                }
                Err(e) => notes.push(format!("{}: {e}", c.policy.name())),
            }
        }
    }
    (out, notes)
}

/// One row of the equal-memory table: a setting at one byte size and its fidelity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EqualBytes {
    /// The byte size asked for.
    pub bytes: usize,
    /// The setting's label without its budget (`morphkv w30 sum`), one line per plot.
    pub setting: String,
    pub label: String,
    pub policy: String,
    /// The budget chosen: the largest whose total fits `bytes`.
    pub budget: usize,
    /// Bytes the cache held at the end of the run (equal to the formula's once full).
    pub kv_bytes: usize,
    pub profile_bytes: usize,
    pub total_bytes: usize,
    /// Fidelity against the full cache over the whole text (see [`super::Span`]).
    pub ppl_change_pct: f64,
    pub kl: f64,
    pub top1: f64,
}

/// A label without its budget word (`b600`).
pub fn without_budget(label: &str) -> String {
    label
        .split_whitespace()
        .filter(|w| !(w.starts_with('b') && w[1..].parse::<usize>().is_ok()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table's rows: `sized[i]` ran as `fids[i]`.
pub fn rows(sized: &[Sized], fids: &[Fidelity]) -> Vec<EqualBytes> {
    sized
        .iter()
        .zip(fids)
        .map(|(s, f)| EqualBytes {
            bytes: s.bytes,
            setting: without_budget(&f.label),
            label: f.label.clone(),
            policy: f.policy.clone(),
            budget: f.budget,
            kv_bytes: f.kv_bytes,
            profile_bytes: f.profile_bytes,
            total_bytes: f.kv_bytes + f.profile_bytes,
            ppl_change_pct: f.overall.ppl_change_pct,
            kl: f.overall.kl,
            top1: f.overall.top1,
        })
        .collect()
}

/// Where a run's bytes differ from the formula's (the text ended before a cache filled):
/// one line each.
pub fn mismatches(sized: &[Sized], fids: &[Fidelity]) -> Vec<String> {
    sized
        .iter()
        .zip(fids)
        .filter(|(s, f)| s.footprint.kv != f.kv_bytes || s.footprint.profile != f.profile_bytes)
        .map(|(s, f)| {
            format!(
                "{}: held {} at the end, not the {} it holds once full",
                f.label,
                format_bytes(f.kv_bytes + f.profile_bytes),
                format_bytes(s.footprint.total())
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::PolicyKind;

    #[test]
    fn sizing_fits_and_notes_what_it_leaves_out() {
        let shape = Shape {
            n_layer: 30,
            n_head: 9,
            n_kv_head: 3,
            head_dim: 64,
        };
        let templates: Vec<CacheConfig> = ["morphkv", "streaming", "snapkv", "full"]
            .iter()
            .map(|p| CacheConfig {
                policy: p.parse::<PolicyKind>().unwrap(),
                // The figures below are f32 K/V's and the f16 profile's.
                kv_type: crate::cache::KvType::F32,
                profile: crate::cache::ProfileType::F16,
                window: Some(30),
                ..CacheConfig::default()
            })
            .collect();
        // MorphKV b600 w30 on SmolLM2-135M: 27,648,000 B of K/V + 9,720,000 B of profile.
        let morph600 = 37_368_000;
        let (sized, notes) = size(&templates, &[1 << 20, morph600], &shape, "--equal-bytes");
        let got: Vec<(usize, &str, usize)> = sized
            .iter()
            .map(|s| {
                (
                    s.bytes,
                    s.variant.cache.policy.name(),
                    s.variant.cache.budget,
                )
            })
            .collect();
        // 1 MiB holds 22 tokens of K/V, streaming's floor is 4 + 30 + 1.
        assert_eq!(
            got,
            vec![(morph600, "morphkv", 600), (morph600, "streaming", 810)]
        );
        assert_eq!(sized[0].footprint.total(), morph600);
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes.iter().any(|n| n.starts_with("snapkv: left out")));
        assert!(notes.iter().any(|n| n.starts_with(
            "morphkv: invalid value for --equal-bytes: 1.00 MiB (1048576 B) is too small"
        )));
        assert_eq!(without_budget("morphkv b600 w30 sum"), "morphkv w30 sum");
    }
}
