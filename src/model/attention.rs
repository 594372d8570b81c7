//! Scaled dot-product attention over the cache's slots: the one place attention is computed.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Attention of `T` new queries over the first `n` slots of one layer's cache, with query heads
/// grouped onto their KV head (GQA) instead of copying K/V per query head.
///
/// - `q`: (H_q, T, d), post-RoPE queries of the new tokens; query head `h` reads KV head
///   `h / G` where `G = H_q / H_kv`.
/// - `k`, `v`: (H_kv, n, d), the used slots, the new tokens' own slots included.
/// - `mask`: (T, n), additive 0 / -inf, or `None` when every slot is visible to every query
///   (a single decoded token sees the whole cache).
///
/// Returns the output (H_q, T, d) and the attention probabilities (H_q, T, n), the rows the
/// cache keeps for its eviction policies. Slot order does not matter: softmax is
/// permutation-invariant over the columns.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (n_head, t, d) = q.dims3()?;
    let (n_kv_head, n, _) = k.dims3()?;
    let group = n_head / n_kv_head;
    // (H_q, T, d) → (H_kv, G·T, d): the G query heads of one KV head become extra rows.
    let qg = q.contiguous()?.reshape((n_kv_head, group * t, d))?;
    // (H_kv, G·T, d) × (H_kv, d, n) → (H_kv, G·T, n)
    let scores = (qg.matmul(&k.t()?)? / (d as f64).sqrt())?;
    let scores = match mask {
        None => scores,
        Some(mask) => {
            // (H_kv, G·T, n) → (H_kv, G, T, n) + (T, n)
            let s4 = scores.reshape((n_kv_head, group, t, n))?;
            s4.broadcast_add(mask)?.reshape((n_kv_head, group * t, n))?
        }
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    // (H_kv, G·T, n) × (H_kv, n, d) → (H_kv, G·T, d)
    let out = probs.matmul(v)?;
    // (H_kv, G·T, d) → (H_q, T, d); (H_kv, G·T, n) → (H_q, T, n)
    let out = out.reshape((n_head, t, d))?;
    let probs = probs.reshape((n_head, t, n))?;
    Ok((out, probs))
}

/// Causal mask for `t` new tokens appended after `past` visible slots: (t, past + t), where
/// new token `i` sees every past slot and new tokens `0..=i`.
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
