//! The decoder's forward pass with its two backends side by side, layer for layer in the same
//! order of operations (see the diagram in [`super`]):
//!
//! - tensor ([`Model::forward_tensor`], [`Model::layer_tensor`]): `T` tokens as candle tensors,
//!   on any device, any cache; prompts and every case the host backend does not take.
//! - host ([`Model::forward_host`], [`Model::layer_host`]): one token on the CPU over host
//!   buffers, without a tensor per operation: projections through [`crate::kernels`],
//!   attention through [`attend_one`].
//!
//! Both give the cache and its policy the same keys, values and attention rows.

use candle_core::{DType, Tensor};

use super::attention::{attend_one, attention, Slots};
use super::linear::with_f32;
use super::{Logits, Model};
use crate::cache::{KvCache, Step};
use crate::error::Result;
use crate::kernels::{self, QActs};

/// `out = x / rms(x) · w`, as candle's `rms_norm`: the host backend's.
fn rms_norm_host(x: &[f32], w: &Tensor, eps: f32, out: &mut [f32]) -> Result<()> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    with_f32(w, |w| {
        for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
            *o = x * inv * w;
        }
    })
}

/// The host backend's buffers, allocated once per token and reused by every layer.
struct Scratch {
    /// (hidden): the normed input of a block.
    h: Vec<f32>,
    /// The quantized input of a projection.
    acts: QActs,
    /// ((H_q + 2·H_kv)·d): the fused q, k, v projection.
    qkv: Vec<f32>,
    /// (H_q·d): the attention output, all heads.
    att: Vec<f32>,
    /// (H_q, len): the attention probabilities.
    probs: Vec<f32>,
    /// (hidden): the output of `wo` or `w_down`.
    proj: Vec<f32>,
    /// (2·ffn): the fused gate and up projection.
    gate_up: Vec<f32>,
    /// (ffn): silu(gate) · up.
    act: Vec<f32>,
}

impl Model {
    /// Whether [`Model::forward_host`] can run this step: one token, CPU, a cache that is not
    /// portable (of any KV type), positions applied at write time.
    pub(super) fn host_step_fits(&self, t: usize, step: &Step, cache: &KvCache) -> bool {
        t == 1 && self.device.is_cpu() && !cache.portable() && !step.rotate_keys
    }

    /// The tensor backend: runs `ids` (the step `cache.begin` opened), ends the step and
    /// returns the logits as asked: (vocab) or (T, vocab).
    pub(super) fn forward_tensor(
        &self,
        ids: &[u32],
        step: &Step,
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<Tensor> {
        let t = ids.len();
        // (T, d / 2) each.
        let rope = self.rope.tables(&step.rope_positions, &self.device)?;
        // (T) → (T, hidden)
        let mut x = self.embed.rows(ids, self.cfg.hidden, &self.device)?;
        for l in 0..self.layers.len() {
            x = self.layer_tensor(l, x, &rope, step, cache)?;
        }
        cache.end()?;
        // (T, hidden) → (T', hidden), T' = 1 or T
        let x = match which {
            Logits::Last => x.narrow(0, t - 1, 1)?,
            Logits::All => x,
        };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.rms_eps as f32)?;
        // (T', hidden) → (T', vocab)
        let logits = self.lm_head.forward(&x)?;
        // (1, vocab) → (vocab)
        let logits = match which {
            Logits::Last => logits.squeeze(0)?,
            Logits::All => logits,
        };
        if which == Logits::Last && logits.device().is_cpu() {
            with_f32(&logits.contiguous()?, |v| self.check_logits(v))??;
        } else if !logits.sum_all()?.to_scalar::<f32>()?.is_finite() {
            self.check_logits(&[f32::NAN])?;
        }
        Ok(logits)
    }

    /// The host backend: runs token `id` (the step `cache.begin` opened; the caller ends it)
    /// and returns its logits, (vocab).
    pub(super) fn forward_host(
        &self,
        id: u32,
        step: &Step,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let hidden = cfg.hidden;
        // (d / 2) each.
        let (cos, sin) = self.rope.angles(step.rope_positions[0]);
        // (hidden)
        let mut x = vec![0f32; hidden];
        self.embed.row_into(id, &mut x)?;
        let mut s = Scratch {
            h: vec![0f32; hidden],
            acts: QActs::default(),
            qkv: Vec::new(),
            att: vec![0f32; cfg.n_head * cfg.head_dim],
            probs: Vec::new(),
            proj: Vec::new(),
            gate_up: Vec::new(),
            act: vec![0f32; cfg.ffn],
        };
        for l in 0..self.layers.len() {
            self.layer_host(l, &mut x, (&cos, &sin), &mut s, cache)?;
        }
        rms_norm_host(&x, &self.norm, cfg.rms_eps as f32, &mut s.h)?;
        // (hidden) → (vocab)
        let mut logits = Vec::new();
        self.lm_head.forward_one(&s.h, &mut s.acts, &mut logits)?;
        Ok(logits)
    }

    /// Layer `l` on tensors: `x` (T, hidden) → (T, hidden), writing the new keys and values
    /// into the cache and handing it the attention rows. `rope`: the step's (cos, sin) tables.
    fn layer_tensor(
        &self,
        l: usize,
        x: Tensor,
        (cos, sin): &(Tensor, Tensor),
        step: &Step,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let layer = &self.layers[l];
        let (n_head, n_kv, d) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let (eps, ffn) = (self.cfg.rms_eps as f32, self.cfg.ffn);
        let t = x.dim(0)?;

        // Attention block.
        let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
        // (T, hidden) → (T, (H_q + 2·H_kv)·d) → q (T, H_q·d), k and v (T, H_kv·d)
        let qkv = layer.wqkv.forward(&h)?;
        let (nq, nk) = (n_head * d, n_kv * d);
        // (T, H·d) → (T, H, d) → (H, T, d)
        let q = qkv
            .narrow(1, 0, nq)?
            .reshape((t, n_head, d))?
            .transpose(0, 1)?;
        let k = qkv
            .narrow(1, nq, nk)?
            .reshape((t, n_kv, d))?
            .transpose(0, 1)?;
        let v = qkv
            .narrow(1, nq + nk, nk)?
            .reshape((t, n_kv, d))?
            .transpose(0, 1)?;
        let q = self.rope.apply(&q, cos, sin)?;
        // Re-based positions: keys are cached before RoPE and rotated at their rank.
        let k = if step.rotate_keys {
            k.contiguous()?
        } else {
            self.rope.apply(&k, cos, sin)?
        };
        // (H_kv, past + T, d) the used slots in f32 (decoded from f16 or Q8_0), the new
        // tokens last.
        let (k_all, v_all) = cache.layer_mut(l).append(&k, &v.contiguous()?)?;
        let k_all = if step.rotate_keys {
            self.rope.apply_at(
                &k_all.to_dtype(DType::F32)?,
                &cache.key_ranks(l, &self.device)?,
            )?
        } else {
            k_all
        };
        // (H_q, T, d); each block's probabilities (H_q, rows, past + T) go to the cache.
        let out = attention(&q, &k_all, &v_all, |row, probs| {
            cache.observe(l, t, row, probs)
        })?;
        // (H_q, T, d) → (T, H_q, d) → (T, H_q·d)
        let out = out.transpose(0, 1)?.reshape((t, n_head * d))?;
        // (T, H_q·d) → (T, hidden), + the residual
        let x = (layer.wo.forward(&out)? + x)?;

        // Feed-forward block.
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
        // (T, hidden) → (T, 2·ffn) → gate, up (T, ffn)
        let gate_up = layer.w_gate_up.forward(&h)?;
        let gate = candle_nn::ops::silu(&gate_up.narrow(1, 0, ffn)?)?;
        let up = gate_up.narrow(1, ffn, ffn)?;
        // (T, ffn) → (T, hidden), + the residual
        Ok((layer.w_down.forward(&(gate * up)?)? + x)?)
    }

    /// Layer `l` on host buffers for one token: `x` (hidden) updated in place, writing the
    /// new key and value into the cache and handing it the attention row. `rope`: the
    /// token's (cos, sin) angles.
    fn layer_host(
        &self,
        l: usize,
        x: &mut [f32],
        (cos, sin): (&[f32], &[f32]),
        s: &mut Scratch,
        cache: &mut KvCache,
    ) -> Result<()> {
        let layer = &self.layers[l];
        let (n_head, n_kv, d) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let (eps, ffn) = (self.cfg.rms_eps as f32, self.cfg.ffn);

        // Attention block.
        rms_norm_host(x, &layer.attn_norm, eps, &mut s.h)?;
        // (hidden) → ((H_q + 2·H_kv)·d) → q (H_q, d), k and v (H_kv, d)
        layer.wqkv.forward_one(&s.h, &mut s.acts, &mut s.qkv)?;
        let (q, kv) = s.qkv.split_at_mut(n_head * d);
        let (k, v) = kv.split_at_mut(n_kv * d);
        self.rope.rotate_host(q, cos, sin);
        // Positions are applied at write time here (`host_step_fits`).
        self.rope.rotate_host(k, cos, sin);
        cache.layer_mut(l).append_host(k, v)?;
        let layer_cache = cache.layer(l);
        let slots = Slots {
            n_head,
            n_kv_head: n_kv,
            head_dim: d,
            cap: layer_cache.capacity(),
            len: layer_cache.len(),
        };
        s.probs.resize(n_head * slots.len, 0.0);
        // (H_q, d) over (H_kv, len, d) → (H_q, d), probabilities (H_q, len) to the cache.
        layer_cache.with_kv_host(|k, v| attend_one(q, k, v, slots, &mut s.probs, &mut s.att))?;
        if cache.wants_probs(1) {
            cache.observe_slice(l, 1, 0, &s.probs, (n_head, 1, slots.len))?;
        }
        // (H_q·d) → (hidden), + the residual
        layer.wo.forward_one(&s.att, &mut s.acts, &mut s.proj)?;
        for (x, p) in x.iter_mut().zip(&s.proj) {
            *x += p;
        }

        // Feed-forward block.
        rms_norm_host(x, &layer.ffn_norm, eps, &mut s.h)?;
        // (hidden) → (2·ffn) → gate, up (ffn) → silu(gate) · up (ffn)
        layer
            .w_gate_up
            .forward_one(&s.h, &mut s.acts, &mut s.gate_up)?;
        let (gate, up) = s.gate_up.split_at(ffn);
        for ((a, g), u) in s.act.iter_mut().zip(gate).zip(up) {
            *a = kernels::silu(*g) * u;
        }
        // (ffn) → (hidden), + the residual
        layer.w_down.forward_one(&s.act, &mut s.acts, &mut s.proj)?;
        for (x, p) in x.iter_mut().zip(&s.proj) {
            *x += p;
        }
        Ok(())
    }
}
