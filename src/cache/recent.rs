//! `recent` (tests only): keep the most recent tokens and nothing else — no sinks, every older
//! token scored by its position. It exists to show that a policy is one file plus one registry
//! line: nothing else in the crate names it, yet it parses, lists and runs like the others.

use super::policy::Settings;
use super::policy::{Policy, ScoreCtx};
use super::registry::Entry;

/// `recent`'s registry entry.
pub const ENTRY: Entry = Entry {
    name: "recent",
    about: "the most recent tokens only (tests)",
    sinks: 0,
    window: None,
    default_window: super::BASELINE_WINDOW,
    recent: 0,
    build,
};

fn build(_: &Settings) -> Box<dyn Policy> {
    Box::new(Recent)
}

/// Newer scores higher.
#[derive(Debug, Clone, Default)]
pub struct Recent;

impl Policy for Recent {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]) {
        for h in 0..ctx.n_kv {
            for s in 0..ctx.n {
                let i = ctx.at(h, s);
                out[i] = ctx.pos[i] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::cache::{CacheConfig, KvCache, PolicyKind, EVICTING_POLICIES, POLICIES, POLICY_LIST};
    use crate::model::Config;

    /// The registry alone makes `recent` a policy: it parses by name, appears in every list
    /// and help text, and a cache run with it keeps exactly the most recent tokens.
    #[test]
    fn a_policy_is_one_file_and_one_registry_line() {
        let kind: PolicyKind = "recent".parse().unwrap();
        assert_eq!(kind.name(), "recent");
        assert_eq!(format!("{kind:?}"), "Recent");
        assert_eq!(serde_json::to_string(&kind).unwrap(), "\"recent\"");
        assert_eq!(POLICIES.last(), Some(&"recent"));
        assert!(POLICY_LIST.ends_with(", morphkv, recent"));
        assert!(EVICTING_POLICIES.ends_with(",morphkv,recent"));
        let help = crate::tui::app::SLASH_HELP;
        assert!(help.iter().any(|(_, text)| text.ends_with("morphkv, recent")));
        let err = "nope".parse::<PolicyKind>().unwrap_err().to_string();
        assert!(err.contains("(known: full, streaming, h2o, tova, snapkv, morphkv, recent)"));

        let model = Config::tiny();
        let budget = 8;
        let cfg = CacheConfig {
            policy: kind,
            budget,
            window: Some(2),
            prefill_chunk: 5,
            ..CacheConfig::default()
        };
        let mut cache = KvCache::with_config(&model, cfg, DType::F32, &Device::Cpu).unwrap();
        // A prompt in chunks of 5, then single tokens.
        for t in [5, 5, 5].into_iter().chain(std::iter::repeat_n(1, 30)) {
            cache.begin(t).unwrap();
            for l in 0..cache.n_layers() {
                let kv = Tensor::zeros((model.n_kv_head, t, model.head_dim), DType::F32, &Device::Cpu)
                    .unwrap();
                cache.layer_mut(l).append(&kv, &kv).unwrap();
            }
            cache.end().unwrap();
            let seen = cache.seen() as u32;
            let want: Vec<u32> = (seen.saturating_sub(budget as u32)..seen).collect();
            for layer in &cache.snapshot().layers {
                for head in layer {
                    let mut held = head.positions.clone();
                    held.sort_unstable();
                    assert_eq!(held, want, "after {seen} tokens");
                }
            }
        }
    }
}
