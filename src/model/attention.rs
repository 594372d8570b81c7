//! Scaled dot-product attention over the cache's slots: the one place attention is computed.

use candle_core::{CpuStorage, DType, Device, Layout, Tensor};

use crate::error::Result;
use crate::kernels::KvRows;

/// Query rows per block: a prompt's attention is computed block by block so that its scores
/// stay cache-sized and each block only reads the slots it can see (causal).
pub const QUERY_BLOCK: usize = 256;

/// Attention of `T` new queries over the used slots of one layer's cache, with query heads
/// grouped onto their KV head (GQA) instead of copying K/V per query head.
///
/// - `q`: (H_q, T, d), post-RoPE queries of the new tokens; query head `h` reads KV head
///   `h / G` where `G = H_q / H_kv`.
/// - `k`, `v`: (H_kv, past + T, d), the used slots; the new tokens are in the last `T` slots,
///   in order. Any float type: each block's visible slots are converted to `q`'s (f32) type.
/// - `observe(first_row, probs)`: receives the attention probabilities of each block of query
///   rows, (H_q, rows, past + first_row + rows), the rows the cache keeps for its eviction
///   policies. Columns are slots; slot order does not matter, softmax is
///   permutation-invariant.
///
/// Returns the output, (H_q, T, d).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mut observe: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<Tensor> {
    let (n_head, t, d) = q.dims3()?;
    let (n_kv_head, n, _) = k.dims3()?;
    let group = n_head / n_kv_head;
    let past = n - t;
    let scale = 1.0 / (d as f64).sqrt();
    let mut outs = Vec::with_capacity(t.div_ceil(QUERY_BLOCK));
    let mut start = 0;
    while start < t {
        let rows = QUERY_BLOCK.min(t - start);
        // Slots this block can see: everything before it and the block itself (causal).
        let visible = past + start + rows;
        // (H_kv, visible, d) in q's type (a no-op when the cache stores it).
        let (kb, vb) = (
            k.narrow(1, 0, visible)?.to_dtype(q.dtype())?,
            v.narrow(1, 0, visible)?.to_dtype(q.dtype())?,
        );
        // (H_q, rows, d) → (H_kv, G·rows, d): the G query heads of one KV head become rows.
        let qb = q
            .narrow(1, start, rows)?
            .contiguous()?
            .reshape((n_kv_head, group * rows, d))?;
        // (H_kv, G·rows, d) × (H_kv, d, visible) → (H_kv, G·rows, visible)
        let scores = qb.matmul(&kb.t()?)?;
        let probs = if scores.device().is_cpu() && scores.dtype() == DType::F32 {
            // Scale, mask and softmax in one pass over the scores, in place.
            scores.inplace_op1(&CausalSoftmax {
                visible,
                rows,
                past: past + start,
                scale: scale as f32,
            })?;
            scores
        } else {
            let scores = (scores * scale)?;
            let scores = if rows > 1 {
                // (H_kv, G·rows, visible) → (H_kv, G, rows, visible) + (rows, visible)
                let mask = causal_mask(rows, past + start, q.device())?;
                scores
                    .reshape((n_kv_head, group, rows, visible))?
                    .broadcast_add(&mask)?
                    .reshape((n_kv_head, group * rows, visible))?
            } else {
                scores
            };
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        // (H_kv, G·rows, visible) × (H_kv, visible, d) → (H_kv, G·rows, d) → (H_q, rows, d)
        outs.push(probs.matmul(&vb)?.reshape((n_head, rows, d))?);
        // (H_kv, G·rows, visible) → (H_q, rows, visible)
        observe(start, &probs.reshape((n_head, rows, visible))?)?;
        start += rows;
    }
    Ok(if outs.len() == 1 {
        outs.swap_remove(0)
    } else {
        Tensor::cat(&outs, 1)?
    })
}

/// On the CPU, a block's scores to probabilities in place ([`crate::kernels::causal_softmax`]):
/// rows of `visible` columns, in groups of `rows` query rows after `past` slots.
struct CausalSoftmax {
    visible: usize,
    rows: usize,
    past: usize,
    scale: f32,
}

impl candle_core::InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((from, to))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("causal-softmax takes contiguous f32 scores")
        };
        let scores = &mut data[from..to];
        crate::kernels::causal_softmax(scores, self.visible, self.rows, self.past, self.scale);
        Ok(())
    }
}

/// Causal mask for `t` new tokens after `past` visible slots: (t, past + t), where new token
/// `i` sees every past slot and new tokens `0..=i`.
pub fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let n = past + t;
    let mut m = vec![0f32; t * n];
    for i in 0..t {
        for j in (past + i + 1)..n {
            m[i * n + j] = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(m, (t, n), device)?)
}

/// Shapes of one layer's cache for [`attend_one`].
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Slots per KV head in the storage.
    pub cap: usize,
    /// Used slots per KV head (the new token's included, last).
    pub len: usize,
}

/// The single-token form of [`attention`], on host values: one new query per head over the
/// used slots, query heads split across threads.
///
/// - `q`: (H_q, d), post-RoPE; query head `h` reads KV head `h / G`.
/// - `k`, `v`: (H_kv, cap, d) as the cache stores them (f32, f16 or Q8_0 rows); slots
///   `0..len` of each head are used, the new token's last.
/// - `probs`: written, (H_q, len): softmax of the scaled scores, what [`attention`] gives
///   `observe`.
/// - `out`: written, (H_q, d).
pub fn attend_one(q: &[f32], k: KvRows, v: KvRows, s: Slots, probs: &mut [f32], out: &mut [f32]) {
    use rayon::prelude::*;
    let (d, n) = (s.head_dim, s.len);
    let group = s.n_head / s.n_kv_head;
    let scale = 1.0 / (d as f32).sqrt();
    probs
        .par_chunks_mut(n)
        .zip(out.par_chunks_mut(d))
        .enumerate()
        .for_each(|(h, (p, o))| {
            let qh = &q[h * d..(h + 1) * d];
            // (len, d) used rows of this query head's KV head.
            let base = (h / group) * s.cap;
            let (kh, vh) = (k.rows(base, n, d), v.rows(base, n, d));
            // (len): q · k_s, scaled; then softmax.
            crate::kernels::scores_kv(qh, kh, scale, p);
            crate::kernels::softmax(p);
            // (d) = Σ_s p_s · v_s
            crate::kernels::weighted_sum_kv(p, vh, o);
        });
}
