//! The decoder on a tiny random-weight model: incremental decoding equals one pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::{DType, Device};
use morphkv::cache::KvCache;
use morphkv::model::{Config, Logits, Model};

fn tiny() -> Model {
    Model::random(Config::tiny(), 1234, &Device::Cpu).unwrap()
}

fn fresh(model: &Model) -> KvCache {
    KvCache::new(model.config(), DType::F32, &Device::Cpu).unwrap()
}

/// Runs `ids` after what `cache` holds and returns the last position's logits.
fn last(model: &Model, cache: &mut KvCache, ids: &[u32]) -> Vec<f32> {
    model
        .forward(ids, cache, Logits::Last)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn ids() -> Vec<u32> {
    (0..40u32).map(|i| (i * 37 + 11) % 97).collect()
}

#[test]
fn token_by_token_equals_one_forward_pass() {
    let model = tiny();
    let ids = ids();
    let mut cache = fresh(&model);
    let all = model
        .forward(&ids, &mut cache, Logits::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(all.len(), ids.len());

    let mut cache = fresh(&model);
    for (i, &id) in ids.iter().enumerate() {
        let step = last(&model, &mut cache, &[id]);
        let d = common::max_abs_diff(&step, &all[i]);
        assert!(d < 1e-4, "position {i}: max abs diff {d}");
    }
    assert_eq!(cache.retained(), ids.len());
    assert_eq!(cache.seen(), ids.len());
}

#[test]
fn chunked_prefill_equals_one_pass_and_logits_depend_on_context() {
    let model = tiny();
    let ids = ids();
    let mut cache = fresh(&model);
    let whole = last(&model, &mut cache, &ids);
    let mut cache = fresh(&model);
    let mut out = Vec::new();
    for part in ids.chunks(7) {
        out = last(&model, &mut cache, part);
    }
    assert!(common::max_abs_diff(&whole, &out) < 1e-4);

    // The same last token after a different history gives different logits: attention works.
    let mut other = ids.clone();
    other[0] = (other[0] + 1) % 97;
    let mut cache = fresh(&model);
    let changed = last(&model, &mut cache, &other);
    assert!(common::max_abs_diff(&whole, &changed) > 1e-3);
}

#[test]
fn cache_grows_past_its_first_allocation() {
    let model = tiny();
    let ids: Vec<u32> = (0..300u32).map(|i| (i * 13 + 5) % 97).collect();
    let mut cache = fresh(&model);
    let whole = last(&model, &mut cache, &ids);
    let mut cache = fresh(&model);
    model
        .forward(&ids[..250], &mut cache, Logits::Last)
        .unwrap();
    let mut out = Vec::new();
    for &id in &ids[250..] {
        out = last(&model, &mut cache, &[id]);
    }
    assert!(common::max_abs_diff(&whole, &out) < 1e-4);
    assert_eq!(cache.kv_bytes(), cache.bytes_per_token() * 300);
}
