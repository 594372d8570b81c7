//! CPU kernels for single-token decoding: matrix × vector products over GGML's quantized
//! blocks (Q4_0, Q4_1, Q8_0, and the K-quants Q4_K, Q5_K, Q6_K) with the activations
//! quantized to 8 bits per 32-value block (as llama.cpp does) and over dense f32 rows, rows
//! split across the rayon pool; attention over one query (scores, softmax, weighted sum),
//! over f32, f16 or Q8_0 keys and values; f16 and 8-bit log-code rows for MorphKV's profile.
//!
//! This file is the safe public API and the run-time dispatch: each function below picks the
//! fastest version this CPU runs. By kind, each with its plain Rust twins:
//! - `quant`: [`Packed`], [`QKind`], [`QActs`], the quantized and dense matrix × vector;
//!   `quant::tiles`, K-quant rows interleaved sixteen at a time where the CPU runs
//!   AVX2 (one register lane per row: no per-row sums or scaling; `MORPHKV_NO_TILES` set
//!   keeps them row after row).
//! - `attention`: scores, softmax, weighted sum, [`silu`], [`exp_nonpositive`].
//! - `f16`: sums of f16 rows and f32 → f16 encoding.
//! - `log8`: the 8-bit log code of probabilities ([`log8_encode`], [`log8_decode`]), sums of
//!   code rows and the row encoder.
//! - `kv`: [`KvRows`], attention over cached rows stored as f16 or Q8_0, Q8_0's encoding.
//! - `x86` (x86-64 only): every `unsafe` of the kernels, the AVX2 and AVX-512 VNNI versions,
//!   reached only through safe functions that take a CPU-feature token, which exists only
//!   once the CPU has been checked. The tests check each against its plain twin.
//!
//! The AVX2 versions need AVX2, FMA and F16C; the AVX-512 ones (quantized rows only) also
//! AVX-512 F/BW/DQ/VNNI and `MORPHKV_NO_AVX512` unset.

mod attention;
mod f16;
mod kv;
mod log8;
mod quant;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use attention::{axpy, exp_nonpositive, silu};
pub use kv::{dequantize_q8_0, quantize_q8_0, KvRows, Q8_BLOCK, Q8_BLOCK_BYTES};
pub use log8::{decode as log8_decode, encode as log8_encode};
pub use quant::{dot_f32, matvec_f32, Packed, QActs, QKind, BLOCK};

/// The AVX-512 token, if the CPU runs AVX-512 VNNI and `MORPHKV_NO_AVX512` is unset (read
/// once).
#[cfg(target_arch = "x86_64")]
fn vnni(cpu: x86::Avx2) -> Option<x86::Vnni> {
    static VNNI: std::sync::OnceLock<Option<x86::Vnni>> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        x86::Vnni::detect(cpu).filter(|_| std::env::var_os("MORPHKV_NO_AVX512").is_none())
    })
}

/// Whether [`matmat`] beats dequantizing `kind` and an f32 GEMM on a prompt of any length:
/// always for the K-quants (each super-block summed in integers for eight tokens); for
/// Q4_0, Q4_1 and Q8_0 where the CPU runs AVX-512 VNNI (pairs of blocks per instruction:
/// on Zen 5, 450-485 GFLOP/s against the GEMM's 200-230 at 512 tokens, `examples/
/// kquant_speed.rs --prompts`; their AVX2 kernel, 135-180, loses to it).
pub fn prompts_in_integers(kind: QKind) -> bool {
    if kind.is_k() {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        return vnni(cpu).is_some();
    }
    false
}

/// Whether K-quant matrices should be tiled (`quant::tiles`): where this CPU runs the
/// tiled kernels (AVX2, or AVX-512 VNNI) and `MORPHKV_NO_TILES` is unset. Elsewhere only the
/// plain twin would read tiles. Tiled, by `examples/kquant_speed.rs` on 2 Zen 5 cores,
/// prompts at 512 tokens: AVX2 Q4_K 509-531 GFLOP/s against 303-358 row after row, Q6_K
/// 433-456 against 284-329; AVX-512 Q4_K 1,057-1,156 against 360-438.
fn tiles_pay() -> bool {
    #[cfg(target_arch = "x86_64")]
    if x86::Avx2::detect().is_some() {
        return std::env::var_os("MORPHKV_NO_TILES").is_none();
    }
    false
}

/// `out = W · x` for a quantized `W` (rows × cols) and `x` quantized into `a`.
pub fn matvec(w: &Packed, a: &QActs, out: &mut [f32]) {
    if w.is_tiled() {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = x86::Avx2::detect() {
            if let Some(wide) = vnni(cpu) {
                return quant::matvec_ranges(
                    |r0, ys| x86::tiled_rows_vnni(wide, w, r0, a, ys),
                    w,
                    out,
                );
            }
            return quant::matvec_ranges(|r0, ys| x86::tiled_rows(cpu, w, r0, a, ys), w, out);
        }
        return quant::matvec_with(quant::dot_plain, w, a, out);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        if w.kind().is_k() {
            if let Some(wide) = vnni(cpu) {
                return quant::matvec_ranges(
                    |r0, ys| x86::dot_rows_vnni(wide, w, r0, a, ys),
                    w,
                    out,
                );
            }
            return quant::matvec_ranges(|r0, ys| x86::dot_rows(cpu, w, r0, a, ys), w, out);
        }
        if let Some(wide) = vnni(cpu) {
            return quant::matvec_with(|w, r, a| x86::dot_vnni(wide, w, r, a), w, a, out);
        }
        return quant::matvec_with(|w, r, a| x86::dot(cpu, w, r, a), w, a, out);
    }
    quant::matvec_with(quant::dot_plain, w, a, out)
}

/// `out = X · Wᵀ` for a quantized `W` (rows × cols) and the `T` rows of `X` quantized into
/// `acts`: `out` (T, rows), row-major. A prompt's projection: each weight block is read once
/// for four tokens (eight for the K-quants).
pub fn matmat(w: &Packed, acts: &[QActs], out: &mut [f32]) {
    assert_eq!(out.len(), w.rows() * acts.len());
    if w.is_tiled() {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = x86::Avx2::detect() {
            if let Some(wide) = vnni(cpu) {
                let tile =
                    |w: &Packed, r0, g: &_, o: &mut _| x86::tiled_group_vnni(wide, w, r0, g, o);
                return quant::matmat_with(quant::dot4_plain, tile, w, acts, out);
            }
            let tile = |w: &Packed, r0, g: &_, o: &mut _| x86::tiled_group(cpu, w, r0, g, o);
            return quant::matmat_with(quant::dot4_plain, tile, w, acts, out);
        }
        return quant::matmat_with(quant::dot4_plain, quant::tile_k_plain, w, acts, out);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        if let Some(wide) = vnni(cpu) {
            return quant::matmat_with(
                |w, r, a| x86::dot4_vnni(wide, w, r, a),
                |w, r0, g, o| x86::tile_vnni(wide, w, r0, g, o),
                w,
                acts,
                out,
            );
        }
        return quant::matmat_with(
            |w, r, a| x86::dot4(cpu, w, r, a),
            |w, r0, g, o| x86::tile(cpu, w, r0, g, o),
            w,
            acts,
            out,
        );
    }
    quant::matmat_with(quant::dot4_plain, quant::tile_k_plain, w, acts, out)
}

/// Attention scores of one query over `n` keys: `out[s] = scale · (q · k_s)`, `k` row-major
/// (n, d) with `d = q.len()`.
pub fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    let d = q.len();
    assert!(k.len() >= out.len() * d);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) {
        if let Some(cpu) = x86::Avx2::detect() {
            return x86::scores(cpu, q, k, scale, out);
        }
    }
    attention::scores_plain(q, k, scale, out)
}

/// `out = Σ_s p[s] · v_s`, `v` row-major (n, d) with `n = p.len()`, `d = out.len()`.
pub fn weighted_sum(p: &[f32], v: &[f32], out: &mut [f32]) {
    let d = out.len();
    assert!(v.len() >= p.len() * d);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(64) {
        if let Some(cpu) = x86::Avx2::detect() {
            return x86::weighted_sum(cpu, p, v, out);
        }
    }
    attention::weighted_sum_plain(p, v, out)
}

/// [`scores`] over keys as the cache stores them: `out[s] = scale · (q · k_s)` for the first
/// `out.len()` rows of `k`, rows of `d = q.len()` values.
pub fn scores_kv(q: &[f32], k: KvRows, scale: f32, out: &mut [f32]) {
    let d = q.len();
    match k {
        KvRows::F32(k) => scores(q, k, scale, out),
        KvRows::F16(k) => {
            assert!(k.len() >= out.len() * d);
            #[cfg(target_arch = "x86_64")]
            if d.is_multiple_of(8) {
                if let Some(cpu) = x86::Avx2::detect() {
                    return x86::scores_f16(cpu, q, k, scale, out);
                }
            }
            kv::scores_f16_plain(q, k, scale, out)
        }
        KvRows::Q8_0(k) => {
            assert!(
                d.is_multiple_of(Q8_BLOCK) && k.len() >= out.len() * d / Q8_BLOCK * Q8_BLOCK_BYTES
            );
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = x86::Avx2::detect() {
                return x86::scores_q8_0(cpu, q, k, scale, out);
            }
            kv::scores_q8_0_plain(q, k, scale, out)
        }
    }
}

/// [`weighted_sum`] over values as the cache stores them: `out = Σ_s p[s] · v_s` over the
/// first `p.len()` rows of `v`, rows of `d = out.len()` values.
pub fn weighted_sum_kv(p: &[f32], v: KvRows, out: &mut [f32]) {
    let d = out.len();
    match v {
        KvRows::F32(v) => weighted_sum(p, v, out),
        KvRows::F16(v) => {
            assert!(v.len() >= p.len() * d);
            #[cfg(target_arch = "x86_64")]
            if d.is_multiple_of(64) {
                if let Some(cpu) = x86::Avx2::detect() {
                    return x86::weighted_sum_f16(cpu, p, v, out);
                }
            }
            kv::weighted_sum_f16_plain(p, v, out)
        }
        KvRows::Q8_0(v) => {
            assert!(
                d.is_multiple_of(Q8_BLOCK) && v.len() >= p.len() * d / Q8_BLOCK * Q8_BLOCK_BYTES
            );
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = x86::Avx2::detect() {
                return x86::weighted_sum_q8_0(cpu, p, v, out);
            }
            kv::weighted_sum_q8_0_plain(p, v, out)
        }
    }
}

/// Rows as the cache stores them decoded to f32: `dst` takes `src`'s values, all of them.
pub fn decode_kv(src: KvRows, dst: &mut [f32]) {
    match src {
        KvRows::F32(x) => dst.copy_from_slice(x),
        KvRows::F16(x) => {
            assert_eq!(x.len(), dst.len());
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = x86::Avx2::detect() {
                return x86::f16_to_f32(cpu, x, dst);
            }
            kv::f16_to_f32_plain(x, dst)
        }
        KvRows::Q8_0(x) => dequantize_q8_0(x, dst),
    }
}

/// Softmax of `p` in place.
pub fn softmax(p: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        return x86::softmax(cpu, p);
    }
    attention::softmax_plain(p)
}

/// A prompt block's attention scores to probabilities, in place: `scores` holds rows of
/// `visible` columns, in groups of `rows` query rows (query row `i` of a group is the block's
/// `i`-th token, which sees the first `past + i + 1` columns). Each row is scaled by `scale`
/// and softmaxed over the columns it sees; the rest become 0 (the causal mask).
pub fn causal_softmax(scores: &mut [f32], visible: usize, rows: usize, past: usize, scale: f32) {
    assert!(visible > 0 && rows > 0 && past + rows <= visible);
    for (r, row) in scores.chunks_exact_mut(visible).enumerate() {
        let (seen, masked) = row.split_at_mut(past + r % rows + 1);
        for x in seen.iter_mut() {
            *x *= scale;
        }
        softmax(seen);
        masked.fill(0.0);
    }
}

/// `y[s] += Σ_r w[r] · rows[r][s]` for f16 rows (converted on the fly), every row at least
/// `y.len()` long: columns outermost, so `y` is loaded and stored once per 8 columns however
/// many rows there are.
pub fn axpy_rows_f16(w: &[f32], rows: &[&[half::f16]], y: &mut [f32]) {
    assert!(w.len() == rows.len() && rows.iter().all(|r| r.len() >= y.len()));
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        return x86::axpy_rows_f16(cpu, w, rows, y);
    }
    f16::axpy_rows_f16_plain(w, rows, y)
}

/// Stores `src · scale` as f16 in `dst` (round to nearest even) and returns the sum, in f64,
/// of the stored values whose `pos` lies in `lo..hi`. f64 sums of f16 values are exact, so
/// the result does not depend on the order of the additions (SIMD lanes or not).
pub fn encode_f16(
    src: &[f32],
    scale: f32,
    dst: &mut [half::f16],
    pos: &[u32],
    lo: u32,
    hi: u32,
) -> f64 {
    assert!(src.len() == dst.len() && src.len() == pos.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        return x86::encode_f16(cpu, src, scale, dst, pos, (lo, hi));
    }
    f16::encode_f16_plain(src, scale, dst, pos, (lo, hi))
}

/// `y[s] += Σ_r w[r] · log8_decode(rows[r][s])` for rows of log codes (decoded on the fly),
/// every row at least `y.len()` long: as [`axpy_rows_f16`], columns outermost.
pub fn axpy_rows_log8(w: &[f32], rows: &[&[u8]], y: &mut [f32]) {
    assert!(w.len() == rows.len() && rows.iter().all(|r| r.len() >= y.len()));
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        return x86::axpy_rows_log8(cpu, w, rows, y);
    }
    log8::axpy_rows_log8_plain(w, rows, y)
}

/// Stores probabilities `src` as log codes ([`log8_encode`]) in `dst` and returns the sum, in
/// f64, of the decoded values ([`log8_decode`]) whose `pos` lies in `lo..hi`: exact, so it
/// does not depend on the order of the additions.
pub fn encode_log8(src: &[f32], dst: &mut [u8], pos: &[u32], lo: u32, hi: u32) -> f64 {
    assert!(src.len() == dst.len() && src.len() == pos.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = x86::Avx2::detect() {
        return x86::encode_log8(cpu, src, dst, pos, (lo, hi));
    }
    log8::encode_log8_plain(src, dst, pos, (lo, hi))
}

/// Asks the CPU to start loading the cache line holding `x[at]` (a hint: no effect on
/// results; nothing happens out of bounds).
#[inline]
pub fn prefetch<T>(x: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    x86::prefetch(x, at);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, at);
}

/// `n` values in -3..3, the same for the same `seed` (the kernel tests' inputs).
#[cfg(test)]
fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-3.0..3.0)).collect()
}
