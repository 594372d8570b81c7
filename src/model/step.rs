//! Single-token decoding on the CPU over host buffers: the same layer as [`Model::forward`]
//! (see its diagram), without a tensor per operation. Projections go through
//! [`crate::kernels`], attention through [`attend_one`]; the cache and its policy see the same
//! keys, values and attention rows as on the tensor path.

use candle_core::Tensor;

use super::attention::{attend_one, Slots};
use super::{with_f32, Model};
use crate::cache::{KvCache, Step};
use crate::error::Result;
use crate::kernels::QActs;

/// `out = x / rms(x) · w`, as candle's `rms_norm`.
fn rms_norm(x: &[f32], w: &Tensor, eps: f32, out: &mut [f32]) -> Result<()> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    with_f32(w, |w| {
        for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
            *o = x * inv * w;
        }
    })
}

impl Model {
    /// Whether [`Model::forward_host`] can run this step: one token, CPU, f32 cache (not
    /// portable), positions applied at write time.
    pub(super) fn host_step_fits(&self, t: usize, step: &Step, cache: &KvCache) -> bool {
        t == 1
            && self.device.is_cpu()
            && !cache.portable()
            && !step.rotate_keys
            && cache.dtype() == candle_core::DType::F32
    }

    /// Runs token `id` through the decoder (the step `cache.begin` opened) and returns its
    /// logits, (vocab).
    pub(super) fn forward_host(
        &self,
        id: u32,
        step: &Step,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (n_head, n_kv, d, hidden) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.hidden);
        let eps = cfg.rms_eps as f32;
        let (cos, sin) = self.rope.angles(step.rope_positions[0]);
        // (hidden)
        let mut x = with_f32(&self.embed, |e| {
            e[id as usize * hidden..(id as usize + 1) * hidden].to_vec()
        })?;
        let mut h = vec![0f32; hidden];
        let mut acts = QActs::default();
        let (mut qkv, mut proj, mut gate_up) = (Vec::new(), Vec::new(), Vec::new());
        let mut act = vec![0f32; cfg.ffn];
        let mut att = vec![0f32; n_head * d];
        let mut probs = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, eps, &mut h)?;
            // (H_q·d + 2·H_kv·d) → q (H_q, d), k and v (H_kv, d)
            layer.wqkv.forward_one(&h, &mut acts, &mut qkv)?;
            let (q, kv) = qkv.split_at_mut(n_head * d);
            let (k, v) = kv.split_at_mut(n_kv * d);
            self.rope.rotate_host(q, &cos, &sin);
            self.rope.rotate_host(k, &cos, &sin);
            cache.layer_mut(l).append_host(k, v)?;
            let layer_cache = cache.layer(l);
            let slots = Slots {
                n_head,
                n_kv_head: n_kv,
                head_dim: d,
                cap: layer_cache.capacity(),
                len: layer_cache.len(),
            };
            probs.resize(n_head * slots.len, 0.0);
            // (H_q, d) over (H_kv, len, d) → (H_q, d), probabilities (H_q, len)
            layer_cache.with_kv_host(|k, v| attend_one(q, k, v, slots, &mut probs, &mut att))?;
            if cache.wants_probs(1) {
                cache.observe_slice(l, 1, 0, &probs, (n_head, 1, slots.len))?;
            }
            layer.wo.forward_one(&att, &mut acts, &mut proj)?;
            for (x, p) in x.iter_mut().zip(&proj) {
                *x += p;
            }

            rms_norm(&x, &layer.ffn_norm, eps, &mut h)?;
            // (2·ffn) → silu(gate) · up (ffn)
            layer.w_gate_up.forward_one(&h, &mut acts, &mut gate_up)?;
            let (gate, up) = gate_up.split_at(cfg.ffn);
            for ((a, g), u) in act.iter_mut().zip(gate).zip(up) {
                *a = crate::kernels::silu(*g) * u;
            }
            layer.w_down.forward_one(&act, &mut acts, &mut proj)?;
            for (x, p) in x.iter_mut().zip(&proj) {
                *x += p;
            }
        }
        rms_norm(&x, &self.norm, eps, &mut h)?;
        let mut logits = Vec::new();
        self.lm_head.forward_one(&h, &mut acts, &mut logits)?;
        Ok(logits)
    }
}
