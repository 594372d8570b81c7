//! Conformance of every eviction policy, on the tiny random model and on the real one, plus
//! brute-force references for MorphKV's and SnapKV's scores and H2O's accumulated attention.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use half::f16;
use morphkv::cache::{
    encode_row, CacheConfig, Fusion, GroupAgg, KvCache, PolicyKind, ProfileType, RingView,
    ScoreCtx, POLICIES,
};
use morphkv::model::attention::attention;
use morphkv::model::{open_gguf, Config, Logits, Model, WeightFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn all_policies() -> Vec<PolicyKind> {
    POLICIES.iter().map(|p| p.parse().unwrap()).collect()
}

fn cfg(policy: PolicyKind, budget: usize, window: usize) -> CacheConfig {
    CacheConfig {
        policy,
        budget,
        window: Some(window),
        prefill_chunk: 16,
        ..CacheConfig::default()
    }
}

/// Positions held by every KV head of every layer.
fn held(cache: &KvCache) -> Vec<Vec<BTreeSet<u32>>> {
    let snap = cache.snapshot();
    snap.layers
        .iter()
        .map(|l| {
            l.iter()
                .map(|h| h.positions.iter().copied().collect())
                .collect()
        })
        .collect()
}

/// Checks the budget and the protected tokens after a step.
fn check_invariants(cache: &KvCache, c: &CacheConfig, decoded: usize, what: &str) {
    let seen = cache.seen() as u32;
    let limit = match c.policy {
        PolicyKind::Full => usize::MAX,
        // SnapKV compresses prompts only: its cache grows by the decoded tokens.
        PolicyKind::SnapKv => c.budget + decoded,
        _ => c.budget,
    };
    // The window, or the budget's recent share where that is more.
    let window = c.protected() as u32;
    assert!(window as usize >= c.effective_window());
    for (l, layer) in held(cache).iter().enumerate() {
        for (h, pos) in layer.iter().enumerate() {
            assert!(
                pos.len() <= limit,
                "{what}: layer {l} head {h} holds {} > {limit}",
                pos.len()
            );
            assert_eq!(
                pos.len(),
                cache.retained(),
                "{what}: heads hold different counts"
            );
            for p in seen.saturating_sub(window)..seen {
                assert!(
                    pos.contains(&p),
                    "{what}: protected token {p} missing (layer {l} head {h})"
                );
            }
            for p in 0..(c.sinks() as u32).min(seen) {
                assert!(
                    pos.contains(&p),
                    "{what}: sink {p} missing (layer {l} head {h})"
                );
            }
        }
        // The ring rows' old mass, kept incrementally, equals a recount (exactly: f64 sums
        // of f16 values).
        let err = cache.layer(l).old_mass_error(c.sinks() as u32);
        assert_eq!(err, 0.0, "{what}: layer {l} old mass off by {err}");
    }
}

/// Prefills `prompt` (chunked by the cache) then decodes greedily for `n` tokens, checking
/// the invariants after every step; returns the logits of every step.
fn run_checked(model: &Model, c: &CacheConfig, prompt: &[u32], n: usize) -> Vec<Vec<f32>> {
    let mut cache =
        KvCache::with_config(model.config(), c.clone(), DType::F32, &Device::Cpu).unwrap();
    let mut out = Vec::new();
    let mut last = None;
    for part in prompt.chunks(c.prefill_chunk) {
        last = Some(model.forward(part, &mut cache, Logits::Last).unwrap());
        check_invariants(&cache, c, 0, &format!("{:?} prefill", c.policy));
    }
    let mut logits = last.unwrap().to_vec1::<f32>().unwrap();
    for i in 0..n {
        let next = morphkv::sampling::argmax(&logits);
        out.push(logits);
        logits = model
            .forward(&[next], &mut cache, Logits::Last)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        check_invariants(&cache, c, i + 1, &format!("{:?} step {i}", c.policy));
    }
    out.push(logits);
    out
}

fn tiny() -> Model {
    Model::random(Config::tiny(), 7, &Device::Cpu).unwrap()
}

fn tiny_prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 31 + 3) % 97).collect()
}

#[test]
fn every_policy_keeps_budget_window_and_sinks_on_the_tiny_model() {
    let model = tiny();
    for p in all_policies() {
        // The policy's recent share, none, most of the budget, all of it (one slot stays
        // open to scoring).
        for recent in [None, Some(0), Some(60), Some(100)] {
            for evict_every in [1, 8] {
                let c = CacheConfig {
                    evict_every,
                    recent,
                    ..cfg(p, 40, 8)
                };
                run_checked(&model, &c, &tiny_prompt(60), 80);
            }
        }
    }
}

#[test]
fn with_room_for_everything_every_policy_equals_full() {
    let model = tiny();
    let prompt = tiny_prompt(50);
    let full = run_checked(&model, &cfg(PolicyKind::Full, 600, 8), &prompt, 30);
    // The engine's own decoder path (KvCache::new) is the full policy.
    let mut cache = KvCache::new(model.config(), DType::F32, &Device::Cpu).unwrap();
    let first = model
        .forward(&prompt, &mut cache, Logits::Last)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(common::max_abs_diff(&first, &full[0]) < 1e-5);
    for p in all_policies() {
        let got = run_checked(&model, &cfg(p, 600, 8), &prompt, 30);
        for (i, (a, b)) in got.iter().zip(&full).enumerate() {
            assert_eq!(a, b, "{p:?}: step {i} differs from full");
        }
    }
}

#[test]
fn slot_order_does_not_change_attention() {
    // After many evictions the slots are out of position order; attention over them equals
    // attention over the same tokens compacted in position order.
    let model = tiny();
    let c = cfg(PolicyKind::MorphKv, 24, 4);
    let mut cache = KvCache::with_config(model.config(), c, DType::F32, &Device::Cpu).unwrap();
    model
        .forward(&tiny_prompt(40), &mut cache, Logits::Last)
        .unwrap();
    for t in 0..30u32 {
        model.forward(&[t % 97], &mut cache, Logits::Last).unwrap();
    }
    let layer = cache.layer(0);
    let (k, v) = layer.kv().unwrap();
    let n = layer.len();
    let mut shuffled = false;
    let mut ks = Vec::new();
    let mut vs = Vec::new();
    for h in 0..2 {
        let pos = layer.positions(h);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&s| pos[s]);
        shuffled |= order.iter().enumerate().any(|(i, &s)| i != s);
        let idx = Tensor::new(
            order.iter().map(|&s| s as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        ks.push(k.get(h).unwrap().index_select(&idx, 0).unwrap());
        vs.push(v.get(h).unwrap().index_select(&idx, 0).unwrap());
    }
    assert!(
        shuffled,
        "evictions should have left slots out of position order"
    );
    let (kc, vc) = (
        Tensor::stack(&ks, 0).unwrap(),
        Tensor::stack(&vs, 0).unwrap(),
    );
    let q = Tensor::randn(0f32, 1.0, (4, 1, 16), &Device::Cpu).unwrap();
    let a = attention(&q, &k, &v, |_, _| Ok(()))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = attention(&q, &kc, &vc, |_, _| Ok(()))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(common::max_abs_diff(&a, &b) < 1e-5);
}

// ---- brute-force references on random tensors -------------------------------------------

const NKV: usize = 2;
const GROUP: usize = 3;
const D: usize = 8;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn softmax(xs: &[f32]) -> Vec<f32> {
    let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = xs.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// Random keys per (head, slot), window queries per (qhead, row), and the ring of rows the
/// cache would hold (full softmax over all `n` slots).
struct Scene {
    n: usize,
    rows: usize,
    keys: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    /// As the cache stores it: scaled f16.
    ring: Vec<f16>,
    pos: Vec<u32>,
}

impl Scene {
    fn new(seed: u64, n: usize, rows: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys: Vec<Vec<f32>> = (0..NKV * n).map(|_| rand_vec(&mut rng, D)).collect();
        let queries: Vec<Vec<f32>> = (0..NKV * GROUP * rows)
            .map(|_| rand_vec(&mut rng, D))
            .collect();
        let mut ring = vec![f16::ZERO; NKV * GROUP * rows * n];
        for qh in 0..NKV * GROUP {
            let h = qh / GROUP;
            for r in 0..rows {
                let q = &queries[qh * rows + r];
                let logits: Vec<f32> = (0..n)
                    .map(|s| dot(q, &keys[h * n + s]) / (D as f32).sqrt())
                    .collect();
                let p = softmax(&logits);
                encode_row(
                    &p,
                    &mut ring[(qh * rows + r) * n..(qh * rows + r + 1) * n],
                    &vec![0; n],
                    0..0,
                );
            }
        }
        // Slots hold shuffled positions, as after evictions.
        let mut pos: Vec<u32> = (0..(NKV * n) as u32).collect();
        for h in 0..NKV {
            let head = &mut pos[h * n..(h + 1) * n];
            for i in (1..n).rev() {
                head.swap(i, rng.random_range(0..=i));
            }
        }
        Self {
            n,
            rows,
            keys,
            queries,
            ring,
            pos,
        }
    }

    /// Each ring row's sum over the candidate slots of its head, as the cache keeps it.
    fn old_mass(&self, candidate: &[bool]) -> Vec<f64> {
        (0..NKV * GROUP * self.rows)
            .map(|i| {
                let h = i / self.rows / GROUP;
                let row = &self.ring[i * self.n..(i + 1) * self.n];
                (0..self.n)
                    .filter(|&s| candidate[h * self.n + s])
                    .map(|s| f64::from(row[s]))
                    .sum()
            })
            .collect()
    }

    fn ctx<'a>(
        &'a self,
        candidate: &'a [bool],
        acc: &'a [f32],
        old_mass: &'a [f64],
    ) -> ScoreCtx<'a> {
        ScoreCtx {
            n_kv: NKV,
            group: GROUP,
            row_group: GROUP,
            n: self.n,
            cap: self.n,
            pos: &self.pos,
            candidate,
            acc,
            ring: RingView::F16(&self.ring),
            ring_cap: self.rows,
            ring_len: self.rows,
            old_mass,
        }
    }
}

#[test]
fn morphkv_scores_equal_brute_force() {
    let (n, rows) = (50, 6);
    let scene = Scene::new(3, n, rows);
    let mut rng = StdRng::seed_from_u64(9);
    // Mostly old slots, and mostly protected ones (where the protected slots hold nearly all
    // of each row's mass and the old mass is summed directly).
    for density in [0.7, 0.06] {
        let candidate: Vec<bool> = (0..NKV * n)
            .map(|_| rng.random::<f32>() < density)
            .collect();
        let acc = vec![0f32; NKV * n];
        for fusion in [Fusion::Sum, Fusion::Max] {
            for group_agg in [GroupAgg::Sum, GroupAgg::Max] {
                let c = CacheConfig {
                    window: Some(rows),
                    fusion,
                    group_agg,
                    ..CacheConfig::default()
                };
                let policy = c.build_policy();
                let mut got = vec![0f32; NKV * n];
                policy.score(
                    &scene.ctx(&candidate, &acc, &scene.old_mass(&candidate)),
                    &mut got,
                );
                for h in 0..NKV {
                    let old: Vec<usize> = (0..n).filter(|&s| candidate[h * n + s]).collect();
                    let mut fused = vec![f32::NAN; n];
                    for r in 0..rows {
                        let mut agg = vec![f32::NAN; n];
                        for g in 0..GROUP {
                            let q = &scene.queries[(h * GROUP + g) * rows + r];
                            // Logits against the old keys only, softmax over them.
                            let l: Vec<f32> = old
                                .iter()
                                .map(|&s| dot(q, &scene.keys[h * n + s]) / (D as f32).sqrt())
                                .collect();
                            for (&s, a) in old.iter().zip(softmax(&l)) {
                                agg[s] = match (group_agg, agg[s].is_nan()) {
                                    (_, true) => a,
                                    (GroupAgg::Sum, false) => agg[s] + a,
                                    (GroupAgg::Max, false) => agg[s].max(a),
                                };
                            }
                        }
                        for &s in &old {
                            fused[s] = match (fusion, fused[s].is_nan()) {
                                (_, true) => agg[s],
                                (Fusion::Sum, false) => fused[s] + agg[s],
                                (Fusion::Max, false) => fused[s].max(agg[s]),
                            };
                        }
                    }
                    for &s in &old {
                        let (a, b) = (got[h * n + s], fused[s]);
                        assert!(
                        // The ring holds f16 (11 significant bits): relative error ~1e-3.
                        (a - b).abs() < 2e-3 * b.abs().max(1e-3),
                        "{fusion:?}/{group_agg:?} density {density} head {h} slot {s}: {a} vs {b}"
                    );
                    }
                }
            }
        }
    }
}

#[test]
fn snapkv_selection_equals_brute_force() {
    let n = 64;
    let rows = morphkv::cache::SNAPKV_OBS_WINDOW;
    let scene = Scene::new(5, n, rows);
    let candidate: Vec<bool> = (0..NKV * n).map(|i| i % n < n - 8).collect();
    let acc = vec![0f32; NKV * n];
    let policy = cfg(PolicyKind::SnapKv, 40, 8).build_policy();
    let mut got = vec![0f32; NKV * n];
    policy.score(
        &scene.ctx(&candidate, &acc, &scene.old_mass(&candidate)),
        &mut got,
    );
    let keep = 20;
    for h in 0..NKV {
        // Votes: attention from every window query of the group, summed.
        let mut votes = vec![0f32; n];
        for g in 0..GROUP {
            for r in 0..rows {
                let q = &scene.queries[(h * GROUP + g) * rows + r];
                let l: Vec<f32> = (0..n)
                    .map(|s| dot(q, &scene.keys[h * n + s]) / (D as f32).sqrt())
                    .collect();
                for (v, p) in votes.iter_mut().zip(softmax(&l)) {
                    *v += p;
                }
            }
        }
        // Candidates in position order, average-pooled (kernel 5, zero padding).
        let mut order: Vec<usize> = (0..n).filter(|&s| candidate[h * n + s]).collect();
        order.sort_by_key(|&s| scene.pos[h * n + s]);
        let pooled: Vec<f32> = (0..order.len())
            .map(|k| {
                let lo = k.saturating_sub(2);
                let hi = (k + 3).min(order.len());
                order[lo..hi].iter().map(|&j| votes[j]).sum::<f32>() / 5.0
            })
            .collect();
        let top = |scores: &dyn Fn(usize) -> f32| -> BTreeSet<usize> {
            let mut idx: Vec<usize> = (0..order.len()).collect();
            idx.sort_by(|&a, &b| scores(b).total_cmp(&scores(a)));
            idx[..keep].iter().map(|&k| order[k]).collect()
        };
        let expected = top(&|k| pooled[k]);
        let actual = top(&|k| got[h * n + order[k]]);
        assert_eq!(expected, actual, "head {h}");
    }
}

// ---- the cache driven directly with synthetic attention ----------------------------------

/// A one-layer cache fed with random keys and exact attention rows, remembering every
/// query and key so tests can recompute what the cache should have done.
struct Sim {
    cache: KvCache,
    rng: StdRng,
    queries: HashMap<u32, Vec<Vec<f32>>>,
    keys: HashMap<(usize, u32), Vec<f32>>,
    /// Attention each (head, position) received, summed over its group and every query.
    received: HashMap<(usize, u32), f32>,
    /// The same, query by query: (the query's position, its probability).
    received_from: HashMap<(usize, u32), Vec<(u32, f32)>>,
}

fn sim_model() -> Config {
    Config {
        n_layer: 1,
        n_head: NKV * GROUP,
        n_kv_head: NKV,
        head_dim: D,
        hidden: NKV * GROUP * D,
        ..Config::tiny()
    }
}

impl Sim {
    fn new(c: CacheConfig, seed: u64) -> Self {
        let cache = KvCache::with_config(&sim_model(), c, DType::F32, &Device::Cpu).unwrap();
        Self {
            cache,
            rng: StdRng::seed_from_u64(seed),
            queries: HashMap::new(),
            keys: HashMap::new(),
            received: HashMap::new(),
            received_from: HashMap::new(),
        }
    }

    /// Runs `t` new tokens through the cache like the model would.
    fn step(&mut self, t: usize) {
        let st = self.cache.begin(t).unwrap();
        let mut k = vec![0f32; NKV * t * D];
        for h in 0..NKV {
            for (i, &p) in st.positions.iter().enumerate() {
                let key = rand_vec(&mut self.rng, D);
                k[(h * t + i) * D..(h * t + i + 1) * D].copy_from_slice(&key);
                self.keys.insert((h, p), key);
            }
        }
        let kt = Tensor::from_vec(k, (NKV, t, D), &Device::Cpu).unwrap();
        let (kall, _) = self.cache.layer_mut(0).append(&kt, &kt).unwrap();
        let n = st.past + t;
        let kall = kall.to_vec3::<f32>().unwrap();
        let mut probs = vec![0f32; NKV * GROUP * t * n];
        for (i, &p) in st.positions.iter().enumerate() {
            let qs: Vec<Vec<f32>> = (0..NKV * GROUP)
                .map(|_| rand_vec(&mut self.rng, D))
                .collect();
            for (qh, q) in qs.iter().enumerate() {
                let h = qh / GROUP;
                let visible = st.past + i + 1;
                let l: Vec<f32> = (0..visible)
                    .map(|s| dot(q, &kall[h][s]) / (D as f32).sqrt())
                    .collect();
                for (s, pr) in softmax(&l).into_iter().enumerate() {
                    probs[(qh * t + i) * n + s] = pr;
                    let pos = self.cache.layer(0).position(h, s);
                    *self.received.entry((h, pos)).or_default() += pr;
                    self.received_from
                        .entry((h, pos))
                        .or_default()
                        .push((p, pr));
                }
            }
            self.queries.insert(p, qs);
        }
        let probs = Tensor::from_vec(probs, (NKV * GROUP, t, n), &Device::Cpu).unwrap();
        self.cache.observe(0, t, 0, &probs).unwrap();
        self.cache.end().unwrap();
    }

    fn held(&self, h: usize) -> BTreeSet<u32> {
        self.cache.layer(0).positions(h).iter().copied().collect()
    }
}

#[test]
fn morphkv_evictions_equal_brute_force_in_the_cache() {
    // The paper's method (only the window protected), and half the budget protected: the
    // scores still come from the window's rows over everything older than the window. With
    // `history`, each token's accumulated attention is added at that per cent weight, each
    // query's share halved every `half_life` queries after it (0: never).
    for (evict_every, recent_pct, history, half_life) in [
        (1, 0, 0, 0),
        (8, 0, 0, 0),
        (1, 50, 0, 0),
        (8, 50, 0, 0),
        (1, 0, 100, 0),
        (1, 50, 300, 0),
        (1, 0, 100, 6),
        (1, 50, 300, 3),
    ] {
        for (fusion, group_agg) in [
            (Fusion::Sum, GroupAgg::Sum),
            (Fusion::Max, GroupAgg::Max),
            (Fusion::Sum, GroupAgg::Max),
            (Fusion::Max, GroupAgg::Sum),
        ] {
            let (budget, window) = (24, 5);
            let protected = window.max(budget * recent_pct / 100) as u32;
            let c = CacheConfig {
                budget,
                window: Some(window),
                recent: Some(recent_pct),
                fusion,
                group_agg,
                history,
                half_life,
                evict_every,
                prefill_chunk: 16,
                // The exact ring: the tolerance below is f16's.
                profile: ProfileType::F16,
                ..CacheConfig::default()
            };
            let mut sim = Sim::new(c, 11);
            sim.step(16);
            sim.step(12);
            let mut evictions = 0;
            for _ in 0..40 {
                let seen = sim.cache.seen() as u32;
                let len = sim.cache.retained();
                if len + 1 > budget {
                    let m = evict_every.max(len + 1 - budget);
                    let recent = seen - window as u32;
                    let mut expected = Vec::new();
                    for h in 0..NKV {
                        let before = sim.held(h);
                        let old: Vec<u32> =
                            before.iter().copied().filter(|&p| p < recent).collect();
                        let mut score: HashMap<u32, f32> = HashMap::new();
                        for qp in recent..seen {
                            let mut agg: HashMap<u32, f32> = HashMap::new();
                            for g in 0..GROUP {
                                let q = &sim.queries[&qp][h * GROUP + g];
                                let l: Vec<f32> = old
                                    .iter()
                                    .map(|p| dot(q, &sim.keys[&(h, *p)]) / (D as f32).sqrt())
                                    .collect();
                                for (p, a) in old.iter().zip(softmax(&l)) {
                                    let e =
                                        agg.entry(*p).or_insert(if group_agg == GroupAgg::Sum {
                                            0.0
                                        } else {
                                            f32::MIN
                                        });
                                    *e = if group_agg == GroupAgg::Sum {
                                        *e + a
                                    } else {
                                        e.max(a)
                                    };
                                }
                            }
                            for (p, a) in agg {
                                let e = score.entry(p).or_insert(if fusion == Fusion::Sum {
                                    0.0
                                } else {
                                    f32::MIN
                                });
                                *e = if fusion == Fusion::Sum {
                                    *e + a
                                } else {
                                    e.max(a)
                                };
                            }
                        }
                        for (p, s) in score.iter_mut() {
                            let received: f32 = sim.received_from[&(h, *p)]
                                .iter()
                                .map(|&(qp, pr)| {
                                    let ago = (seen - 1 - qp) as f32;
                                    let fade = if half_life == 0 {
                                        1.0
                                    } else {
                                        0.5f32.powf(ago / half_life as f32)
                                    };
                                    pr * fade
                                })
                                .sum();
                            *s += history as f32 / 100.0 * received;
                        }
                        // Candidates: older than the protected span.
                        let mut ranked: Vec<u32> = old
                            .iter()
                            .copied()
                            .filter(|&p| p < seen - protected)
                            .collect();
                        ranked.sort_by(|a, b| score[a].total_cmp(&score[b]).then(a.cmp(b)));
                        let take = m.min(ranked.len());
                        let victims: BTreeSet<u32> = ranked[..take].iter().copied().collect();
                        // Tokens scored within the ring's f16 precision of the cut may swap
                        // sides of it.
                        let cut = if take > 0 {
                            score[&ranked[take - 1]]
                        } else {
                            0.0
                        };
                        let near: BTreeSet<u32> = ranked
                            .iter()
                            .copied()
                            .filter(|p| (score[p] - cut).abs() <= 4e-3 * cut.abs())
                            .collect();
                        expected.push((
                            before
                                .difference(&victims)
                                .copied()
                                .collect::<BTreeSet<u32>>(),
                            near,
                        ));
                    }
                    sim.step(1);
                    evictions += 1;
                    for (h, (exp, near)) in expected.iter().enumerate() {
                        let mut got = sim.held(h);
                        got.remove(&seen);
                        let differ: BTreeSet<u32> =
                            got.symmetric_difference(exp).copied().collect();
                        assert!(
                            got.len() == exp.len() && differ.is_subset(near),
                            "{fusion:?}/{group_agg:?} evict_every {evict_every} recent \
                             {recent_pct}% history {history}% half-life {half_life} head {h} \
                             at {seen}: kept \
                             {got:?}, expected {exp:?}"
                        );
                    }
                } else {
                    sim.step(1);
                }
            }
            assert!(
                evictions >= 40 / evict_every.max(2),
                "too few evictions: {evictions}"
            );
        }
    }
}

#[test]
fn h2o_accumulated_attention_survives_slot_reuse() {
    let c = CacheConfig {
        policy: PolicyKind::H2o,
        budget: 20,
        window: Some(4),
        prefill_chunk: 16,
        ..CacheConfig::default()
    };
    let mut sim = Sim::new(c, 21);
    sim.step(16);
    // 60 decode steps: slots are evicted and refilled many times over.
    for _ in 0..60 {
        sim.step(1);
    }
    // Direct check: evict with the current statistics and compare scores.
    let seen = sim.cache.seen() as u32;
    let before: Vec<BTreeSet<u32>> = (0..NKV).map(|h| sim.held(h)).collect();
    let received = sim.received.clone();
    sim.step(1);
    let snap = sim.cache.snapshot();
    for h in 0..NKV {
        let head = &snap.layers[0][h];
        let mut compared = 0;
        for (p, sc) in head.positions.iter().zip(&head.scores) {
            if *p == seen || sc.is_nan() || !before[h].contains(p) {
                continue;
            }
            let want = received[&(h, *p)];
            assert!(
                (sc - want).abs() < 1e-4,
                "head {h} pos {p}: score {sc} vs received {want}"
            );
            compared += 1;
        }
        assert!(compared > 5, "head {h}: too few scored slots");
    }
}

#[test]
fn every_policy_keeps_its_invariants_on_the_real_model() {
    let path = common::default_model();
    let (ct, mut r) = open_gguf(&path).unwrap();
    let model = Model::from_gguf(&ct, &mut r, &path, &Device::Cpu, WeightFormat::Auto).unwrap();
    let tok = morphkv::tokenizer::Tokenizer::from_gguf(&ct, &path).unwrap();
    let prompt = tok
        .encode_plain("The lighthouse keeper wrote in her log every evening. She noted the wind, the ships that passed, and the colour of the sea. One night a storm came from the west, and the lamp")
        .unwrap();
    for p in all_policies() {
        let c = CacheConfig {
            prefill_chunk: 24,
            ..cfg(p, 32, 6)
        };
        let logits = run_checked(&model, &c, &prompt, 24);
        assert!(
            logits.iter().all(|l| l.iter().all(|x| x.is_finite())),
            "{p:?}"
        );
    }
}

#[test]
fn rebased_positions_equal_absolute_while_nothing_is_evicted() {
    use morphkv::cache::Positions;
    let model = tiny();
    let prompt = tiny_prompt(40);
    for p in [PolicyKind::Full, PolicyKind::MorphKv, PolicyKind::H2o] {
        let abs = run_checked(&model, &cfg(p, 600, 8), &prompt, 20);
        let c = CacheConfig {
            positions: Positions::Rebased,
            ..cfg(p, 600, 8)
        };
        let reb = run_checked(&model, &c, &prompt, 20);
        for (i, (a, b)) in abs.iter().zip(&reb).enumerate() {
            let d = common::max_abs_diff(a, b);
            assert!(
                d < 1e-5,
                "{p:?} step {i}: rebased differs from absolute by {d}"
            );
        }
    }
}

#[test]
fn rebased_ranks_number_each_heads_tokens_in_order() {
    use morphkv::cache::Positions;
    let model = tiny();
    for p in [PolicyKind::MorphKv, PolicyKind::Streaming, PolicyKind::Tova] {
        let c = CacheConfig {
            positions: Positions::Rebased,
            evict_every: 3,
            ..cfg(p, 30, 6)
        };
        let mut cache = KvCache::with_config(model.config(), c, DType::F32, &Device::Cpu).unwrap();
        model
            .forward(&tiny_prompt(50), &mut cache, Logits::Last)
            .unwrap();
        for t in 0..40u32 {
            model.forward(&[t % 97], &mut cache, Logits::Last).unwrap();
            for l in 0..cache.n_layers() {
                let ranks = cache
                    .key_ranks(l, &Device::Cpu)
                    .unwrap()
                    .to_vec2::<u32>()
                    .unwrap();
                for (h, r) in ranks.iter().enumerate() {
                    let pos = cache.layer(l).positions(h);
                    let mut by_pos: Vec<usize> = (0..pos.len()).collect();
                    by_pos.sort_by_key(|&s| pos[s]);
                    let in_order: Vec<u32> = by_pos.iter().map(|&s| r[s]).collect();
                    let expected: Vec<u32> = (0..pos.len() as u32).collect();
                    assert_eq!(in_order, expected, "{p:?} layer {l} head {h} step {t}");
                }
            }
        }
        // Past the evictions the newest token's RoPE position is its rank, not its position.
        assert!(cache.seen() > cache.retained());
    }
}

/// Recorded evictions name exactly the tokens each step removed (layer, head and position),
/// with the score the policy gave them; nothing is recorded while recording is off.
#[test]
fn recorded_evictions_are_exactly_the_tokens_that_left() {
    let model = tiny();
    for p in [PolicyKind::MorphKv, PolicyKind::H2o, PolicyKind::Streaming] {
        let c = CacheConfig {
            evict_every: 2,
            ..cfg(p, 30, 6)
        };
        let mut cache = KvCache::with_config(model.config(), c, DType::F32, &Device::Cpu).unwrap();
        model
            .forward(&tiny_prompt(40), &mut cache, Logits::Last)
            .unwrap();
        assert!(
            cache.take_evictions().is_empty(),
            "{p:?}: recorded while off"
        );
        cache.record_evictions(true);
        let mut total = 0;
        for t in 0..20u32 {
            let before = held(&cache);
            model.forward(&[t % 97], &mut cache, Logits::Last).unwrap();
            let after = held(&cache);
            let mut gone: Vec<(usize, usize, u32)> = Vec::new();
            for (l, heads) in before.iter().enumerate() {
                for (h, pos) in heads.iter().enumerate() {
                    gone.extend(pos.difference(&after[l][h]).map(|&x| (l, h, x)));
                }
            }
            let evictions = cache.take_evictions();
            let mut got: Vec<(usize, usize, u32)> =
                evictions.iter().map(|e| (e.layer, e.head, e.pos)).collect();
            got.sort_unstable();
            gone.sort_unstable();
            assert_eq!(got, gone, "{p:?} step {t}");
            assert!(
                evictions.iter().all(|e| e.score.is_finite()),
                "{p:?} step {t}"
            );
            total += got.len();
        }
        assert!(total > 0, "{p:?}: nothing was evicted");
    }
}

/// A bounded cache that evicts while decoding gives back the room a prompt chunk needed (its
/// slots then lie without gaps) and takes it again for the next chunk.
#[test]
fn decoding_gives_back_the_prompt_chunks_room() {
    let model = tiny();
    for p in [PolicyKind::MorphKv, PolicyKind::Streaming] {
        let c = cfg(p, 30, 6);
        let mut cache =
            KvCache::with_config(model.config(), c.clone(), DType::F32, &Device::Cpu).unwrap();
        model
            .forward(&tiny_prompt(40), &mut cache, Logits::Last)
            .unwrap();
        let chunk_room = c.budget + c.prefill_chunk;
        assert_eq!(
            cache.layer(0).capacity(),
            chunk_room,
            "{p:?} after the prompt"
        );
        model.forward(&[5], &mut cache, Logits::Last).unwrap();
        for l in 0..cache.n_layers() {
            assert_eq!(
                cache.layer(l).capacity(),
                c.budget,
                "{p:?} layer {l} decoding"
            );
        }
        model
            .forward(&tiny_prompt(20), &mut cache, Logits::Last)
            .unwrap();
        assert!(cache.layer(0).capacity() >= chunk_room, "{p:?} next chunk");
        check_invariants(&cache, &c, 1, &format!("{p:?} after the second chunk"));
    }
}
