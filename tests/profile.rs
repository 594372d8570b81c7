//! The attention profile's storage (`--profile`): the 8-bit log ring keeps the old masses
//! exact after evictions, takes half the f16 ring's bytes, and keeps (almost) the same tokens
//! as the f16 ring.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use candle_core::{DType, Device};
use morphkv::cache::{CacheConfig, KvCache, PolicyKind, ProfileType, Shape};
use morphkv::model::{Config, Logits, Model};

fn tiny() -> Model {
    Model::random(Config::tiny(), 7, &Device::Cpu).unwrap()
}

/// Feeds the same tokens through a cache of `c` (prompt in chunks, then one at a time),
/// checking the old masses after every step; returns the positions each KV head of each
/// layer holds after each decoded token.
fn run(model: &Model, c: &CacheConfig, tokens: &[u32], prompt: usize) -> Vec<BTreeSet<u32>> {
    let mut cache =
        KvCache::with_config(model.config(), c.clone(), DType::F32, &Device::Cpu).unwrap();
    for part in tokens[..prompt].chunks(c.prefill_chunk) {
        model.forward(part, &mut cache, Logits::Last).unwrap();
    }
    let mut out = Vec::new();
    for &t in &tokens[prompt..] {
        model.forward(&[t], &mut cache, Logits::Last).unwrap();
        for l in 0..cache.n_layers() {
            let err = cache.layer(l).old_mass_error(c.sinks() as u32);
            assert_eq!(err, 0.0, "{:?}: layer {l} old mass off by {err}", c.profile);
            for h in 0..model.config().n_kv_head {
                out.push(cache.layer(l).positions(h).iter().copied().collect());
            }
        }
    }
    // Bytes: the profile as stored, and as the footprint says.
    let held = CacheConfig {
        budget: cache.retained(),
        ..c.clone()
    };
    let want = held.bytes_at(&Shape::from(model.config()));
    assert_eq!(cache.profile_bytes(), want.profile, "{:?}", c.profile);
    out
}

#[test]
fn log8_profile_keeps_almost_the_same_tokens_as_f16() {
    let model = tiny();
    let tokens: Vec<u32> = (0..200u32).map(|i| (i * 31 + 3) % 97).collect();
    let base = CacheConfig {
        policy: PolicyKind::MorphKv,
        budget: 40,
        window: Some(8),
        prefill_chunk: 16,
        ..CacheConfig::default()
    };
    for evict_every in [1, 8] {
        let at = |profile| CacheConfig {
            profile,
            evict_every,
            ..base.clone()
        };
        let exact = run(&model, &at(ProfileType::F16), &tokens, 60);
        let log8 = run(&model, &at(ProfileType::Log8), &tokens, 60);
        // Held tokens, over every head and step: the rings' rounding may swap a few tokens
        // whose scores tie within 4.5%.
        let (mut same, mut all) = (0usize, 0usize);
        for (a, b) in exact.iter().zip(&log8) {
            same += a.intersection(b).count();
            all += a.len();
        }
        let frac = same as f64 / all as f64;
        eprintln!("evict_every {evict_every}: {frac:.4} of tokens shared");
        assert!(
            frac > 0.85,
            "evict_every {evict_every}: {frac:.4} of tokens shared"
        );
    }
}

#[test]
fn log8_profile_takes_half_the_f16_bytes() {
    let model = tiny();
    let shape = Shape::from(model.config());
    for policy in [PolicyKind::MorphKv, PolicyKind::Tova, PolicyKind::SnapKv] {
        let at = |profile| {
            CacheConfig {
                policy,
                budget: 40,
                window: Some(8),
                profile,
                ..CacheConfig::default()
            }
            .bytes_at(&shape)
        };
        let (f16, log8) = (at(ProfileType::F16), at(ProfileType::Log8));
        assert_eq!(f16.kv, log8.kv, "{policy:?}");
        assert!(log8.profile > 0, "{policy:?}");
        assert_eq!(2 * log8.profile, f16.profile, "{policy:?}");
    }
}

/// One row per KV head (`log8-kv`, `f16-kv`): the old masses stay exact through a run and
/// the bytes are the footprint's, a group's worth fewer than one row per query head; with one
/// query head per KV head the cache keeps exactly the tokens the per-query-head profile keeps.
#[test]
fn kv_head_profile_pools_the_group_and_matches_query_rows_at_group_one() {
    let tokens: Vec<u32> = (0..160u32).map(|i| (i * 31 + 3) % 97).collect();
    let base = CacheConfig {
        policy: PolicyKind::MorphKv,
        budget: 40,
        window: Some(8),
        prefill_chunk: 16,
        ..CacheConfig::default()
    };
    let at = |profile| CacheConfig {
        profile,
        ..base.clone()
    };
    let model = tiny();
    let shape = Shape::from(model.config());
    let group = shape.n_head / shape.n_kv_head;
    assert!(group > 1);
    for (query, kv) in [
        (ProfileType::Log8, ProfileType::Log8Kv),
        (ProfileType::F16, ProfileType::F16Kv),
    ] {
        let (q, k) = (at(query).bytes_at(&shape), at(kv).bytes_at(&shape));
        assert_eq!((q.kv, q.profile), (k.kv, group * k.profile), "{kv:?}");
        // `run` checks the old masses after every step and the bytes at the end.
        let held = run(&model, &at(kv), &tokens, 60);
        assert!(!held.is_empty());
    }
    let single = Model::random(
        Config {
            n_kv_head: 4,
            ..Config::tiny()
        },
        7,
        &Device::Cpu,
    )
    .unwrap();
    for (query, kv) in [
        (ProfileType::Log8, ProfileType::Log8Kv),
        (ProfileType::F16, ProfileType::F16Kv),
    ] {
        let a = run(&single, &at(query), &tokens, 60);
        let b = run(&single, &at(kv), &tokens, 60);
        assert_eq!(a, b, "{kv:?}");
    }
}
