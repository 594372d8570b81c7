//! Telemetry for traces and the UI: the evicted tokens ([`Eviction`]), where a decoded
//! token's attention went per layer ([`LayerAttention`]), and an owned picture of the cache
//! ([`Snapshot`]). None of it is computed unless asked for (recording is off by default).

use serde::Serialize;

use super::KvCache;

/// One evicted token, for traces and the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eviction {
    pub layer: usize,
    pub head: usize,
    /// The token's position in the conversation.
    pub pos: u32,
    /// Its score when it was evicted.
    pub score: f32,
}

/// Where one layer's attention went for the last decoded token (averaged over query heads).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayerAttention {
    /// Probability mass on the window, on the sinks and on older retained tokens.
    pub window: f32,
    pub sinks: f32,
    pub old: f32,
    /// The most attended positions and their mass, highest first.
    pub top: Vec<(u32, f32)>,
}

/// Where one decoded token's attention went in `layer`, from its rows (H_q, 1, visible) over
/// the used slots: the mass on the sinks, the window and older tokens, and the five most
/// attended positions, each query head weighing 1/H_q. A token sits in different slots of
/// different KV heads, so masses meet by position in a small open-addressing table: one probe
/// per (KV head, slot), then plain array adds per row entry, in query-head order.
///
/// `slots` holds each KV head's slot positions at a stride of `cap`; query head `q` reads KV
/// head `q / group`; `sinks` and `window_from` are the positions the sinks end and the window
/// starts at.
fn summarize_rows(
    (slots, cap, group): (&[u32], usize, usize),
    rows: &[f32],
    (n_head, visible): (usize, usize),
    (sinks, window_from): (u32, u32),
) -> LayerAttention {
    let group = group.max(1);
    let n_kv = n_head.div_ceil(group);
    let bits = (2 * n_kv * visible)
        .max(16)
        .next_power_of_two()
        .trailing_zeros();
    let size = 1usize << bits;
    let (mut keys, mut full, mut mass) = (vec![0u32; size], vec![false; size], vec![0f32; size]);
    let mut used = Vec::with_capacity(n_kv * visible);
    // Table index of each (KV head, slot).
    let mut at = vec![0u32; n_kv * visible];
    for h in 0..n_kv {
        let pos = &slots[h * cap..h * cap + visible];
        for (a, &p) in at[h * visible..(h + 1) * visible].iter_mut().zip(pos) {
            // Fibonacci hashing; linear probing.
            let mut i = (u64::from(p).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
            while full[i] && keys[i] != p {
                i = (i + 1) & (size - 1);
            }
            if !full[i] {
                (full[i], keys[i]) = (true, p);
                used.push(i);
            }
            *a = i as u32;
        }
    }
    // Sinks, old tokens, window.
    let mut class = [0f32; 3];
    let share = 1.0 / n_head as f32;
    for qh in 0..n_head {
        let h = qh / group;
        let pos = &slots[h * cap..h * cap + visible];
        let at = &at[h * visible..(h + 1) * visible];
        let row = &rows[qh * visible..(qh + 1) * visible];
        for ((&p, &position), &i) in row.iter().zip(pos).zip(at) {
            let p = p * share;
            let c = usize::from(position >= sinks) * (1 + usize::from(position >= window_from));
            class[c] += p;
            mass[i as usize] += p;
        }
    }
    // Highest mass first, then the older token.
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(6);
    for &i in &used {
        let e = (keys[i], mass[i]);
        if top.len() < 5 || top.last().is_some_and(|last| order(&e, last).is_lt()) {
            let k = top.partition_point(|x| order(x, &e).is_lt());
            top.insert(k, e);
            top.truncate(5);
        }
    }
    LayerAttention {
        window: class[2],
        sinks: class[0],
        old: class[1],
        top,
    }
}

impl KvCache {
    /// Seconds this cache has spent on its policy so far: observing attention, scoring,
    /// choosing and moving victims (the part of a step that `full` does not pay).
    pub fn policy_secs(&self) -> f64 {
        self.policy_secs
    }

    /// Bytes of one token's K and V across all layers and KV heads.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.kv.row_bytes(self.head_dim) * self.n_kv_head * self.layers.len()
    }

    /// Bytes of the retained keys and values.
    pub fn kv_bytes(&self) -> usize {
        self.bytes_per_token() * self.retained()
    }

    /// Bytes of the attention rows kept for scoring (MorphKV's profile: H_q · R · budget per
    /// layer, f16).
    pub fn profile_bytes(&self) -> usize {
        let retained = self.retained();
        self.layers.iter().map(|l| l.profile.bytes(retained)).sum()
    }

    /// Bytes a cache that never evicts would hold for the same conversation.
    pub fn full_kv_bytes(&self) -> usize {
        self.bytes_per_token() * self.seen()
    }

    /// Starts or stops recording evictions for [`KvCache::take_evictions`]; a recorder must
    /// take them regularly (e.g. after every step).
    pub fn record_evictions(&mut self, on: bool) {
        self.record = on;
        if !on {
            self.evicted.clear();
        }
    }

    /// Evictions since the last call, oldest first (empty unless recording).
    pub fn take_evictions(&mut self) -> Vec<Eviction> {
        std::mem::take(&mut self.evicted)
    }

    /// Keep, per layer, where each decoded token's attention went (for the UI; off by
    /// default).
    pub fn record_attention(&mut self, on: bool) {
        self.attention = on.then(|| vec![LayerAttention::default(); self.layers.len()]);
    }

    /// Per layer, where the last decoded token's attention went (empty unless recording).
    pub fn last_attention(&self) -> &[LayerAttention] {
        self.attention.as_deref().unwrap_or(&[])
    }

    /// Summarises a decode step's attention row of layer `l`, (H_q, 1, visible).
    pub(super) fn summarize_attention(
        &mut self,
        l: usize,
        rows: &[f32],
        (n_head, _, visible): (usize, usize, usize),
    ) {
        let sinks = self.cfg.sinks() as u32;
        let window_from = self
            .next_pos
            .saturating_sub(self.cfg.effective_window() as u32);
        let layer = &self.layers[l];
        let sum = summarize_rows(
            (&layer.pos, layer.cap, layer.group),
            rows,
            (n_head, visible),
            (sinks, window_from),
        );
        if let Some(a) = self.attention.as_mut() {
            a[l] = sum;
        }
    }

    /// An owned picture of the cache for the UI and tools.
    pub fn snapshot(&self) -> Snapshot {
        let window = self.cfg.effective_window();
        Snapshot {
            policy: self.policy.name().to_string(),
            budget: self.cfg.budget,
            window,
            sinks: self.cfg.sinks(),
            seen: self.seen(),
            retained: self.retained(),
            window_from: self.next_pos.saturating_sub(window as u32),
            kv_bytes: self.kv_bytes(),
            profile_bytes: self.profile_bytes(),
            full_kv_bytes: self.full_kv_bytes(),
            layers: self
                .layers
                .iter()
                .map(|l| {
                    (0..l.n_kv)
                        .map(|h| HeadSnapshot {
                            positions: l.positions(h).to_vec(),
                            scores: l.score[h * l.cap..h * l.cap + l.len].to_vec(),
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

/// What one KV head holds.
#[derive(Debug, Clone, Serialize)]
pub struct HeadSnapshot {
    /// Positions of the retained tokens, in slot order.
    pub positions: Vec<u32>,
    /// Their latest scores (NaN: not scored yet, e.g. window tokens).
    pub scores: Vec<f32>,
}

/// An owned picture of the cache: per layer, per KV head, what is retained.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub policy: String,
    pub budget: usize,
    pub window: usize,
    pub sinks: usize,
    pub seen: usize,
    pub retained: usize,
    /// Tokens at or after this position are in the protected window.
    pub window_from: u32,
    pub kv_bytes: usize,
    pub profile_bytes: usize,
    pub full_kv_bytes: usize,
    /// `layers[l][h]`.
    pub layers: Vec<Vec<HeadSnapshot>>,
}

#[cfg(test)]
mod tests {
    use super::{summarize_rows, LayerAttention};

    /// The attention summary merges positions across KV heads exactly as summing them in a
    /// map, query head by query head, would: the same masses, bit for bit, and the same top.
    #[test]
    fn attention_summaries_match_a_map_by_position() {
        let mut seed = 3u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (n_head, group, cap) = (6, 3, 50);
        for (visible, sinks, window_from) in [(1, 0, 0), (37, 4, 90), (50, 4, 2), (50, 0, 400)] {
            // Each KV head holds distinct positions, many shared with the other head.
            let mut slots = vec![0u32; 2 * cap];
            for h in 0..2 {
                let mut p: Vec<u32> = (0..120).collect();
                for i in (1..p.len()).rev() {
                    p.swap(i, next() as usize % (i + 1));
                }
                slots[h * cap..(h + 1) * cap].copy_from_slice(&p[..cap]);
            }
            let rows: Vec<f32> = (0..n_head * visible)
                .map(|_| (next() % 1000) as f32 / 997.0)
                .collect();
            let mut want = LayerAttention::default();
            let mut by_pos = std::collections::HashMap::<u32, f32>::new();
            let share = 1.0 / n_head as f32;
            for qh in 0..n_head {
                for s in 0..visible {
                    let pos = slots[(qh / group) * cap + s];
                    let p = rows[qh * visible + s] * share;
                    if pos < sinks {
                        want.sinks += p;
                    } else if pos >= window_from {
                        want.window += p;
                    } else {
                        want.old += p;
                    }
                    *by_pos.entry(pos).or_default() += p;
                }
            }
            let mut top: Vec<(u32, f32)> = by_pos.into_iter().collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(5);
            want.top = top;
            let got = summarize_rows(
                (&slots, cap, group),
                &rows,
                (n_head, visible),
                (sinks, window_from),
            );
            assert_eq!(got, want, "visible {visible}");
        }
    }
}
