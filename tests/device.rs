//! The decoder and cache on a second device against the CPU's host path, on the tiny random
//! model with the same seeded weights: logits within a stated tolerance and the same tokens
//! retained, for every policy (MorphKV and full named by the issue; the others come free).
//!
//! The second device is, always, the CPU in portable mode (tensor ops only, as a GPU runs
//! them: the path GPUs take, checked on any machine), and, in a `cuda` build with a GPU, CUDA
//! GPU 0. `MORPHKV_REQUIRE_GPU=1` (the device check script sets it) makes a missing GPU a
//! failure instead of a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use candle_core::{DType, Device};
use morphkv::cache::{CacheConfig, KvCache, PolicyKind, POLICIES};
use morphkv::model::{Config, Logits, Model};

/// Largest |Δ| allowed between two devices' logits, relative to the largest |logit|: both run
/// f32, but reductions are ordered differently (GPU trees, CPU SIMD lanes).
const TOLERANCE: f32 = 1e-3;

/// What one run produced: the logits after the prompt and after each decoded token, and the
/// positions every KV head of every layer held at the end.
struct Trace {
    logits: Vec<Vec<f32>>,
    held: Vec<Vec<BTreeSet<u32>>>,
}

/// Prefills 90 tokens in chunks of 16, then decodes 40 tokens fed from `feed` (the same on
/// both sides, so a near-tie in argmax cannot make the runs diverge).
fn run(model: &Model, c: &CacheConfig, portable: bool, feed: &[u32]) -> Trace {
    let mut cache =
        KvCache::with_config(model.config(), c.clone(), DType::F32, model.device()).unwrap();
    cache.set_portable(portable);
    let prompt: Vec<u32> = (0..90u32).map(|i| (i * 31 + 3) % 97).collect();
    let mut logits = Vec::new();
    let mut last = None;
    for part in prompt.chunks(c.prefill_chunk) {
        last = Some(model.forward(part, &mut cache, Logits::Last).unwrap());
    }
    logits.push(last.unwrap().to_vec1::<f32>().unwrap());
    for &id in feed {
        let l = model.forward(&[id], &mut cache, Logits::Last).unwrap();
        logits.push(l.to_vec1::<f32>().unwrap());
    }
    let held = cache
        .snapshot()
        .layers
        .iter()
        .map(|l| {
            l.iter()
                .map(|h| h.positions.iter().copied().collect())
                .collect()
        })
        .collect();
    Trace { logits, held }
}

fn configs() -> Vec<CacheConfig> {
    POLICIES
        .iter()
        .map(|p| {
            let policy: PolicyKind = p.parse().unwrap();
            CacheConfig {
                policy,
                budget: 48,
                window: Some(8),
                prefill_chunk: 16,
                ..CacheConfig::default()
            }
        })
        .collect()
}

/// Runs every policy on the CPU host path and on `other` (a model on another device, or the
/// CPU in portable mode), and compares.
fn compare(cpu: &Model, other: &Model, portable: bool, what: &str) {
    let feed: Vec<u32> = (0..40u32).map(|i| (i * 17 + 5) % 97).collect();
    for c in configs() {
        let a = run(cpu, &c, false, &feed);
        let b = run(other, &c, portable, &feed);
        let name = c.policy.name();
        assert_eq!(a.logits.len(), b.logits.len());
        for (step, (x, y)) in a.logits.iter().zip(&b.logits).enumerate() {
            let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= TOLERANCE * scale,
                "{what}, {name}, step {step}: max |Δ| {worst} > {TOLERANCE} × {scale}"
            );
        }
        assert_eq!(a.held, b.held, "{what}, {name}: retained tokens differ");
    }
}

fn tiny(device: &Device) -> Model {
    Model::random(Config::tiny(), 11, device).unwrap()
}

#[test]
fn portable_tensor_path_matches_the_host_path_for_every_policy() {
    let cpu = tiny(&Device::Cpu);
    compare(&cpu, &cpu, true, "cpu portable");
}

#[test]
fn gpu_matches_cpu_for_every_policy() {
    let required = std::env::var("MORPHKV_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let gpu = match morphkv::device::DeviceSpec::Cuda(0).open() {
        Ok(d) => d,
        Err(e) if !required => {
            eprintln!("skipped: no CUDA GPU ({e})");
            return;
        }
        Err(e) => panic!("MORPHKV_REQUIRE_GPU=1 but no CUDA GPU: {e}"),
    };
    eprintln!("comparing {} against the CPU", morphkv::device::name(&gpu));
    compare(&tiny(&Device::Cpu), &tiny(&gpu), false, "cuda:0");
}
