//! CPU kernels for single-token decoding: matrix × vector products over GGML's quantized
//! blocks (Q4_0, Q4_1, Q8_0) with the activations quantized to 8 bits per 32-value block (as
//! llama.cpp does), and over dense f32 rows. Rows are split across the rayon pool.
//!
//! This module holds the crate's only `unsafe`: AVX2 intrinsics, chosen at run time when the
//! CPU has AVX2 and FMA. Each has a plain Rust twin in this file, and the tests check them
//! against each other and against dequantized f32 arithmetic.

#![allow(unsafe_code)]

use half::f16;
use rayon::prelude::*;

/// Values per quantization block.
pub const BLOCK: usize = 32;

/// The GGML block types with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QKind {
    /// `{d: f16, qs: [u8; 16]}`: value = d · (nibble − 8).
    Q4_0,
    /// `{d: f16, m: f16, qs: [u8; 16]}`: value = d · nibble + m.
    Q4_1,
    /// `{d: f16, qs: [i8; 32]}`: value = d · q.
    Q8_0,
}

impl QKind {
    /// Bytes per block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// A quantized matrix repacked for the kernels: each row's block scales (and Q4_1 minimums)
/// in arrays of their own, so eight are converted and multiplied at once, and the packed
/// values in another. Same bytes as the GGUF blocks, another order.
#[derive(Debug, Clone)]
pub struct Packed {
    kind: QKind,
    rows: usize,
    cols: usize,
    /// (rows, cols / 32) block scales.
    d: Vec<f16>,
    /// (rows, cols / 32) Q4_1 minimums; empty for the other kinds.
    m: Vec<f16>,
    /// (rows, cols / 32, 16 or 32) nibbles (value j in the low half of byte j, value j + 16
    /// in its high half) or bytes.
    qs: Vec<u8>,
}

impl Packed {
    /// Repacks `data` (GGML blocks, row-major, as in a GGUF file); `None` if `cols` is not a
    /// multiple of 32 or the length does not match.
    pub fn from_ggml(kind: QKind, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        let bb = kind.block_bytes();
        let nb = rows * (cols / BLOCK);
        if !cols.is_multiple_of(BLOCK) || data.len() != nb * bb {
            return None;
        }
        let mut p = Self {
            kind,
            rows,
            cols,
            d: Vec::with_capacity(nb),
            m: Vec::with_capacity(if kind == QKind::Q4_1 { nb } else { 0 }),
            qs: Vec::with_capacity(nb * p_values(kind)),
        };
        for blk in data.chunks_exact(bb) {
            p.d.push(half_at(blk, 0));
            let at = if kind == QKind::Q4_1 {
                p.m.push(half_at(blk, 2));
                4
            } else {
                2
            };
            p.qs.extend_from_slice(&blk[at..]);
        }
        Some(p)
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The block type.
    pub fn kind(&self) -> QKind {
        self.kind
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        2 * (self.d.len() + self.m.len()) + self.qs.len()
    }

    /// Row `r`: its scales, minimums (empty unless Q4_1) and packed values.
    fn row(&self, r: usize) -> (&[f16], &[f16], &[u8]) {
        let nb = self.cols / BLOCK;
        let v = p_values(self.kind);
        let m = if self.m.is_empty() {
            &self.m[..]
        } else {
            &self.m[r * nb..(r + 1) * nb]
        };
        (
            &self.d[r * nb..(r + 1) * nb],
            m,
            &self.qs[r * nb * v..(r + 1) * nb * v],
        )
    }

    /// Row `r` as f32 values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (d, m, qs) = self.row(r);
        let v = p_values(self.kind);
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (d, qs) = (d[b].to_f32(), &qs[b * v..(b + 1) * v]);
            match self.kind {
                QKind::Q4_0 | QKind::Q4_1 => {
                    let min = match self.kind {
                        QKind::Q4_1 => m[b].to_f32(),
                        _ => -8.0 * d,
                    };
                    for (j, &q) in qs.iter().enumerate() {
                        out[j] = d * (q & 0xF) as f32 + min;
                        out[j + 16] = d * (q >> 4) as f32 + min;
                    }
                }
                QKind::Q8_0 => {
                    for (o, &q) in out.iter_mut().zip(qs) {
                        *o = d * (q as i8) as f32;
                    }
                }
            }
        }
    }
}

/// Bytes of packed values per block.
fn p_values(kind: QKind) -> usize {
    match kind {
        QKind::Q4_0 | QKind::Q4_1 => 16,
        QKind::Q8_0 => 32,
    }
}

fn half_at(b: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Activations quantized to 8 bits per block of 32: scale, values, and scale × the values'
/// sum (which the minimum of Q4_1 and the offset of Q4_0 multiply), as llama.cpp's Q8_1.
#[derive(Debug, Clone, Default)]
pub struct QActs {
    d: Vec<f32>,
    ds: Vec<f32>,
    q: Vec<i8>,
}

impl QActs {
    /// Quantizes `x` (length a multiple of 32) in place of the previous contents.
    pub fn quantize(&mut self, x: &[f32]) {
        let nb = x.len() / BLOCK;
        self.d.resize(nb, 0.0);
        self.ds.resize(nb, 0.0);
        self.q.resize(nb * BLOCK, 0);
        for (b, xs) in x.chunks_exact(BLOCK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut s = 0i32;
            for (q, &v) in self.q[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                s += *q as i32;
            }
            // Scales rounded to f16 as llama.cpp's Q8_0/Q8_1 blocks (and candle's) store them.
            self.d[b] = f16::from_f32(d).to_f32();
            self.ds[b] = f16::from_f32(d * s as f32).to_f32();
        }
    }
}

type DotFn = fn(&Packed, usize, &QActs) -> f32;

/// Whether the AVX-512 kernels may run: the CPU has AVX-512 F/BW/DQ and
/// `MORPHKV_NO_AVX512` is unset (read once).
#[cfg(target_arch = "x86_64")]
fn wide() -> bool {
    use std::arch::is_x86_feature_detected as has;
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        has!("avx512f")
            && has!("avx512bw")
            && has!("avx512dq")
            && std::env::var_os("MORPHKV_NO_AVX512").is_none()
    })
}

/// The fastest row·activations dot product this CPU runs.
fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            if wide() && has!("avx512vnni") {
                return avx512::dot;
            }
            return avx2::dot;
        }
    }
    dot_plain
}

/// Row `r` of `w` · quantized activations, in plain Rust.
fn dot_plain(w: &Packed, r: usize, a: &QActs) -> f32 {
    let (d, m, qs) = w.row(r);
    let v = p_values(w.kind);
    let mut acc = 0f32;
    for b in 0..d.len() {
        let (qs, qa) = (&qs[b * v..(b + 1) * v], &a.q[b * BLOCK..(b + 1) * BLOCK]);
        let dw = d[b].to_f32();
        let isum: i32 = match w.kind {
            QKind::Q4_0 | QKind::Q4_1 => qs
                .iter()
                .enumerate()
                .map(|(j, &q)| {
                    (q & 0xF) as i32 * qa[j] as i32 + (q >> 4) as i32 * qa[j + 16] as i32
                })
                .sum(),
            QKind::Q8_0 => qs
                .iter()
                .zip(qa)
                .map(|(&w, &x)| (w as i8) as i32 * x as i32)
                .sum(),
        };
        acc += dw * a.d[b] * isum as f32;
        acc += match w.kind {
            QKind::Q4_0 => -8.0 * dw * a.ds[b],
            QKind::Q4_1 => m[b].to_f32() * a.ds[b],
            QKind::Q8_0 => 0.0,
        };
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{p_values, Packed, QActs, QKind, BLOCK};
    use half::f16;
    use std::arch::x86_64::*;

    /// Row `r` of `w` as the raw pointers the row kernels read (scales, minimums, values)
    /// and its block count, after checking that every read they make is in bounds.
    pub(super) fn row_parts(w: &Packed, r: usize, a: &QActs) -> RowParts {
        let (d, m, qs) = w.row(r);
        let nb = d.len();
        assert!(a.q.len() >= nb * BLOCK && a.d.len() >= nb && a.ds.len() >= nb);
        assert!(qs.len() == nb * p_values(w.kind) && (m.is_empty() || m.len() == nb));
        (d.as_ptr().cast(), m.as_ptr().cast(), qs.as_ptr(), nb)
    }

    pub(super) type RowParts = (*const u16, *const u16, *const u8, usize);

    pub(super) fn dot(w: &Packed, r: usize, a: &QActs) -> f32 {
        let (d, m, q, nb) = row_parts(w, r, a);
        // SAFETY: `dot_fn` hands out this function only after detecting AVX2, FMA and F16C;
        // `row_parts` checked that every read is in bounds.
        unsafe {
            match w.kind {
                QKind::Q4_0 => row::<0>(d, m, q, a, nb),
                QKind::Q4_1 => row::<1>(d, m, q, a, nb),
                QKind::Q8_0 => row::<2>(d, m, q, a, nb),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row<const KIND: u8>(
        d: *const u16,
        m: *const u16,
        q: *const u8,
        a: &QActs,
        nb: usize,
    ) -> f32 {
        // SAFETY: the caller's contract, passed on.
        unsafe { dot_row::<KIND, false>(d, m, q, a, nb) }
    }

    /// Σ over one block of (weight values) × (8-bit activations), as 8 f32 lanes. `KIND`: 0
    /// Q4_0, 1 Q4_1 (16 bytes of nibbles at `q`), 2 Q8_0 (32 signed bytes).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const KIND: u8>(q: *const u8, qa: *const i8) -> __m256 {
        // SAFETY: the caller passes a block's packed values at `q` and 32 activations at `qa`.
        let x = unsafe { _mm256_loadu_si256(qa.cast()) };
        let pairs = if KIND == 2 {
            // SAFETY: as above.
            let w = unsafe { _mm256_loadu_si256(q.cast()) };
            // |w| · (x with w's sign): unsigned × signed, as maddubs needs.
            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        } else {
            // SAFETY: as above.
            let qs = unsafe { _mm_loadu_si128(q.cast()) };
            let low4 = _mm_set1_epi8(0xF);
            let lo = _mm_and_si128(qs, low4);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low4);
            // Values 0..16 in the low lane, 16..32 in the high lane, as in the activations.
            _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), x)
        };
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// One row: eight blocks' scales (and minimums) converted and multiplied at once, the
    /// Q4_0/Q4_1 offsets as one 8-wide product with the activations' `ds`; the last
    /// `nb % 8` blocks one by one. `WIDE`: pairs of blocks through AVX-512 VNNI.
    ///
    /// Inlined into [`row`] and `avx512::row`, which carry the CPU features.
    #[inline(always)]
    pub(super) unsafe fn dot_row<const KIND: u8, const WIDE: bool>(
        d: *const u16,
        m: *const u16,
        q: *const u8,
        a: &QActs,
        nb: usize,
    ) -> f32 {
        let v = if KIND == 2 { 32 } else { 16 };
        let qa = a.q.as_ptr();
        let (ad, ads) = (a.d.as_ptr(), a.ds.as_ptr());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut off = _mm256_setzero_ps();
        let mut scale = [0f32; 8];
        let mut wide = super::avx512::Acc::default();
        let groups = nb / 8;
        for g in 0..groups {
            let b = g * 8;
            // SAFETY: blocks `b..b + 8` exist in this row (the caller's contract).
            unsafe {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.add(b).cast()));
                let dsv = _mm256_loadu_ps(ads.add(b));
                match KIND {
                    0 => off = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(-8.0)), dsv, off),
                    1 => {
                        let mw = _mm256_cvtph_ps(_mm_loadu_si128(m.add(b).cast()));
                        off = _mm256_fmadd_ps(mw, dsv, off);
                    }
                    _ => {}
                }
                _mm256_storeu_ps(
                    scale.as_mut_ptr(),
                    _mm256_mul_ps(dw, _mm256_loadu_ps(ad.add(b))),
                );
                let mut i = 0;
                while i < 8 {
                    let (b0, b1) = (b + i, b + i + 1);
                    if WIDE {
                        super::avx512::pair::<KIND>(
                            &mut wide,
                            q.add(b0 * v),
                            qa.add(b0 * BLOCK),
                            scale[i],
                            scale[i + 1],
                        );
                    } else {
                        let s0 = block::<KIND>(q.add(b0 * v), qa.add(b0 * BLOCK));
                        let s1 = block::<KIND>(q.add(b1 * v), qa.add(b1 * BLOCK));
                        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(scale[i]), s0, acc0);
                        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(scale[i + 1]), s1, acc1);
                    }
                    i += 2;
                }
            }
        }
        let mut tail = 0f32;
        for b in groups * 8..nb {
            // SAFETY: block `b` exists in this row.
            unsafe {
                let dw = f16::from_bits(*d.add(b)).to_f32();
                let s0 = block::<KIND>(q.add(b * v), qa.add(b * BLOCK));
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw * *ad.add(b)), s0, acc0);
                tail += match KIND {
                    0 => -8.0 * dw * *ads.add(b),
                    1 => f16::from_bits(*m.add(b)).to_f32() * *ads.add(b),
                    _ => 0.0,
                };
            }
        }
        let mut total = _mm256_add_ps(_mm256_add_ps(acc0, acc1), off);
        if WIDE {
            // SAFETY: WIDE is only chosen after detecting AVX-512.
            total = _mm256_add_ps(total, unsafe { super::avx512::fold(&wide) });
        }
        hsum(total) + tail
    }

    /// [`super::scores`]: four keys at a time on independent accumulators. Needs
    /// `q.len() % 8 == 0` and `k` holding `out.len()` rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
        let (d, n) = (q.len(), out.len());
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        let mut s = 0;
        while s + 4 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < d {
                // SAFETY: `c + 8 <= d`, and rows `s..s + 4` exist (the caller's contract).
                unsafe {
                    let qc = _mm256_loadu_ps(qp.add(c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kp.add((s + j) * d + c)), *a);
                    }
                }
                c += 8;
            }
            for (j, a) in acc.iter().enumerate() {
                out[s + j] = hsum(*a) * scale;
            }
            s += 4;
        }
        while s < n {
            let mut a = _mm256_setzero_ps();
            let mut c = 0;
            while c < d {
                // SAFETY: as above, for row `s`.
                unsafe {
                    a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qp.add(c)),
                        _mm256_loadu_ps(kp.add(s * d + c)),
                        a,
                    );
                }
                c += 8;
            }
            out[s] = hsum(a) * scale;
            s += 1;
        }
    }

    /// [`super::weighted_sum`]: 64 output values at a time held in registers over all rows.
    /// Needs `out.len() % 64 == 0` and `v` holding `p.len()` rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sum(p: &[f32], v: &[f32], out: &mut [f32]) {
        let d = out.len();
        let vp = v.as_ptr();
        let mut c0 = 0;
        while c0 < d {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (s, &w) in p.iter().enumerate() {
                let w = _mm256_set1_ps(w);
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: row `s` exists and `c0 + 64 <= d` (the caller's contract).
                    *a = _mm256_fmadd_ps(
                        w,
                        unsafe { _mm256_loadu_ps(vp.add(s * d + c0 + 8 * r)) },
                        *a,
                    );
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: `c0 + 8·r + 8 <= d = out.len()`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * r), *a) };
            }
            c0 += 64;
        }
    }

    /// [`super::softmax`], eight values at a time; `e^x` as [`super::exp_nonpositive`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax(p: &mut [f32]) {
        let n = p.len();
        let body = n - n % 8;
        let ptr = p.as_mut_ptr();
        let mut m8 = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= n`.
            m8 = _mm256_max_ps(m8, unsafe { _mm256_loadu_ps(ptr.add(i)) });
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m8) };
        let max = lanes
            .iter()
            .chain(&p[body..])
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        let (mx, mut sum8) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= n`.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), mx));
                _mm256_storeu_ps(ptr.add(i), e);
                sum8 = _mm256_add_ps(sum8, e);
            }
            i += 8;
        }
        let mut sum = hsum(sum8);
        for x in &mut p[body..] {
            *x = super::exp_nonpositive(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        let inv8 = _mm256_set1_ps(inv);
        i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= n`.
            unsafe {
                _mm256_storeu_ps(ptr.add(i), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(i)), inv8))
            };
            i += 8;
        }
        for x in &mut p[body..] {
            *x *= inv;
        }
    }

    /// `e^x` of eight values `x <= 0`: [`super::exp_nonpositive`]'s arithmetic.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_LT_OQ);
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let k = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(
            _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)),
            23,
        );
        let y = _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
        _mm256_andnot_ps(tiny, y)
    }

    /// [`super::axpy_rows_f16`], eight columns at a time. Needs every row at least
    /// `y.len()` long and `w.len() == rows.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_rows_f16(w: &[f32], rows: &[&[f16]], y: &mut [f32]) {
        let n = y.len();
        let body = n - n % 8;
        let yp = y.as_mut_ptr();
        // Four rows per sweep over `y`: four sequential streams, which the hardware prefetcher
        // follows (the rows come from memory, `y` stays in L1).
        let mut i = 0;
        while i + 4 <= rows.len() {
            let (r0, r1, r2, r3) = (rows[i], rows[i + 1], rows[i + 2], rows[i + 3]);
            let (w0, w1) = (_mm256_set1_ps(w[i]), _mm256_set1_ps(w[i + 1]));
            let (w2, w3) = (_mm256_set1_ps(w[i + 2]), _mm256_set1_ps(w[i + 3]));
            let mut c = 0;
            while c < body {
                // SAFETY: `c + 8 <= n`, within `y` and within every row (the caller's contract).
                unsafe {
                    // The ring is read once a step, whole (~10 MB for a 30-layer model):
                    // non-temporal prefetches keep it from pushing the weights and K/V out
                    // of L2/L3 (without them the matrix kernels measured ~20% slower under
                    // MorphKV). A prefetch past a row's end reads nothing and cannot fault.
                    if c % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_NTA>(r0.as_ptr().wrapping_add(c + 256).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r1.as_ptr().wrapping_add(c + 256).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r2.as_ptr().wrapping_add(c + 256).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r3.as_ptr().wrapping_add(c + 256).cast());
                    }
                    let x0 = _mm256_cvtph_ps(_mm_loadu_si128(r0.as_ptr().add(c).cast()));
                    let x1 = _mm256_cvtph_ps(_mm_loadu_si128(r1.as_ptr().add(c).cast()));
                    let x2 = _mm256_cvtph_ps(_mm_loadu_si128(r2.as_ptr().add(c).cast()));
                    let x3 = _mm256_cvtph_ps(_mm_loadu_si128(r3.as_ptr().add(c).cast()));
                    let mut acc = _mm256_loadu_ps(yp.add(c));
                    acc = _mm256_fmadd_ps(w0, x0, acc);
                    acc = _mm256_fmadd_ps(w1, x1, acc);
                    acc = _mm256_fmadd_ps(w2, x2, acc);
                    acc = _mm256_fmadd_ps(w3, x3, acc);
                    _mm256_storeu_ps(yp.add(c), acc);
                }
                c += 8;
            }
            i += 4;
        }
        for (&a, r) in w[i..].iter().zip(&rows[i..]) {
            let wa = _mm256_set1_ps(a);
            let mut c = 0;
            while c < body {
                // SAFETY: as above.
                unsafe {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(r.as_ptr().add(c).cast()));
                    let acc = _mm256_fmadd_ps(wa, x, _mm256_loadu_ps(yp.add(c)));
                    _mm256_storeu_ps(yp.add(c), acc);
                }
                c += 8;
            }
        }
        for (a, r) in w.iter().zip(rows) {
            for (y, x) in y[body..].iter_mut().zip(&r[body..n]) {
                *y += a * x.to_f32();
            }
        }
    }

    /// [`super::encode_f16`], eight values at a time. Needs equal lengths.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn encode_f16(
        src: &[f32],
        scale: f32,
        dst: &mut [f16],
        pos: &[u32],
        (lo, hi): (u32, u32),
    ) -> f64 {
        let n = src.len();
        let (sp, dp, pp) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>(), pos.as_ptr());
        let k = _mm256_set1_ps(scale);
        // Unsigned `lo <= p < hi` as signed compares after flipping the sign bit.
        let flip = _mm256_set1_epi32(i32::MIN);
        let lo_v = _mm256_set1_epi32((lo ^ 0x8000_0000) as i32);
        let hi_v = _mm256_set1_epi32((hi ^ 0x8000_0000) as i32);
        let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        // Streaming (non-temporal) stores need 16-byte alignment: values before the first
        // boundary go through the plain twin. They skip reading the lines first: a ring row is written
        // whole and read again only at the next step's scoring, from memory anyway.
        let first = dp.align_offset(16).min(n);
        let body = first + (n - first) / 8 * 8;
        let mut i = first;
        while i < body {
            // SAFETY: `i + 8 <= n`, within all three slices; `dp.add(i)` is 16-byte aligned
            // (`first` aligns it and `i - first` is a multiple of 8 u16s).
            unsafe {
                let h = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(sp.add(i)), k), 0);
                _mm_stream_si128(dp.add(i).cast(), h);
                let stored = _mm256_cvtph_ps(h);
                let p = _mm256_xor_si256(_mm256_loadu_si256(pp.add(i).cast()), flip);
                let below_lo = _mm256_cmpgt_epi32(lo_v, p);
                let below_hi = _mm256_cmpgt_epi32(hi_v, p);
                let keep = _mm256_andnot_si256(below_lo, below_hi);
                let v = _mm256_and_ps(stored, _mm256_castsi256_ps(keep));
                s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
                s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
            }
            i += 8;
        }
        // Streaming stores are weakly ordered: fence them before the row is handed on.
        _mm_sfence();
        let mut lanes = [0f64; 4];
        // SAFETY: `lanes` holds four f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(s0, s1)) };
        lanes.iter().sum::<f64>()
            + super::encode_f16_plain(
                &src[..first],
                scale,
                &mut dst[..first],
                &pos[..first],
                (lo, hi),
            )
            + super::encode_f16_plain(
                &src[body..],
                scale,
                &mut dst[body..],
                &pos[body..],
                (lo, hi),
            )
    }

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{avx2, Packed, QActs, QKind};
    use std::arch::x86_64::*;

    /// Sixteen f32 lanes: the first eight accumulate even blocks, the last eight odd ones.
    pub(super) struct Acc(__m512);

    impl Default for Acc {
        fn default() -> Self {
            // SAFETY: zeroing a register needs no CPU feature beyond x86-64's.
            Self(unsafe { std::mem::zeroed() })
        }
    }

    pub(super) fn dot(w: &Packed, r: usize, a: &QActs) -> f32 {
        let (d, m, q, nb) = avx2::row_parts(w, r, a);
        // SAFETY: `dot_fn` hands out this function only after detecting AVX2, FMA, F16C and
        // AVX-512 F/BW/DQ/VNNI; `row_parts` checked that every read is in bounds.
        unsafe {
            match w.kind {
                QKind::Q4_0 => row::<0>(d, m, q, a, nb),
                QKind::Q4_1 => row::<1>(d, m, q, a, nb),
                QKind::Q8_0 => row::<2>(d, m, q, a, nb),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn row<const KIND: u8>(
        d: *const u16,
        m: *const u16,
        q: *const u8,
        a: &QActs,
        nb: usize,
    ) -> f32 {
        // SAFETY: the caller's contract, passed on.
        unsafe { avx2::dot_row::<KIND, true>(d, m, q, a, nb) }
    }

    /// Adds blocks `b` and `b + 1` (values at `q`, activations at `qa`, scales `s0`, `s1`)
    /// into `acc`: one VNNI dot product for both.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma")]
    pub(super) unsafe fn pair<const KIND: u8>(
        acc: &mut Acc,
        q: *const u8,
        qa: *const i8,
        s0: f32,
        s1: f32,
    ) {
        // SAFETY: the caller passes two consecutive blocks' values at `q` (32 or 64 bytes)
        // and their 64 activations at `qa`.
        let x = unsafe { _mm512_loadu_si512(qa.cast()) };
        let sums = if KIND == 2 {
            // SAFETY: as above.
            let w = unsafe { _mm512_loadu_si512(q.cast()) };
            // |w| · (x with w's sign): unsigned × signed, as VNNI needs.
            let negative = _mm512_movepi8_mask(w);
            let sx = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sx)
        } else {
            // SAFETY: as above: 16 bytes of nibbles per block, the two blocks adjacent.
            let qs = unsafe { _mm256_loadu_si256(q.cast()) };
            let low4 = _mm256_set1_epi8(0xF);
            let lo = _mm256_and_si256(qs, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), low4);
            // [lo0, lo1, hi0, hi1] → [lo0, hi0, lo1, hi1]: each block's 32 values in order.
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let w = _mm512_shuffle_i64x2(w, w, 0b11_01_10_00);
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x)
        };
        let scale = _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1);
        acc.0 = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums), acc.0);
    }

    /// The two halves of `acc` added: 8 lanes.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn fold(acc: &Acc) -> __m256 {
        _mm256_add_ps(
            _mm512_castps512_ps256(acc.0),
            _mm512_extractf32x8_ps(acc.0, 1),
        )
    }
}

/// Rows per parallel task: a few tasks per thread, so a slow core does not hold the rest up.
fn chunk_rows(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads() * 4).max(16)
}

/// `out = W · x` for a quantized `W` (rows × cols) and `x` quantized into `a`.
pub fn matvec(w: &Packed, a: &QActs, out: &mut [f32]) {
    matvec_with(dot_fn(), w, a, out)
}

fn matvec_with(dot: DotFn, w: &Packed, a: &QActs, out: &mut [f32]) {
    debug_assert_eq!(out.len(), w.rows);
    let chunk = chunk_rows(w.rows);
    out.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (i, y) in ys.iter_mut().enumerate() {
            *y = dot(w, c * chunk + i, a);
        }
    });
}

/// `out = W · x` for a dense row-major f32 `W` (out.len() × x.len()).
pub fn matvec_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
    let cols = x.len();
    debug_assert_eq!(w.len(), cols * out.len());
    let chunk = chunk_rows(out.len());
    out.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (i, y) in ys.iter_mut().enumerate() {
            let r = c * chunk + i;
            *y = dot_f32(&w[r * cols..(r + 1) * cols], x);
        }
    });
}

/// Dot product with eight independent lanes (which the compiler turns into SIMD).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y += a · x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Attention scores of one query over `n` keys: `out[s] = scale · (q · k_s)`, `k` row-major
/// (n, d) with `d = q.len()`.
pub fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    let d = q.len();
    let n = out.len();
    assert!(k.len() >= n * d);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if d.is_multiple_of(8) && has!("avx2") && has!("fma") {
            // SAFETY: AVX2 and FMA detected; `k` holds `n` rows of `d` (asserted), `d` is a
            // multiple of 8 as the kernel needs.
            return unsafe { avx2::scores(q, k, scale, out) };
        }
    }
    for (o, ks) in out.iter_mut().zip(k.chunks_exact(d)) {
        *o = dot_f32(q, ks) * scale;
    }
}

/// `out = Σ_s p[s] · v_s`, `v` row-major (n, d) with `n = p.len()`, `d = out.len()`.
pub fn weighted_sum(p: &[f32], v: &[f32], out: &mut [f32]) {
    let d = out.len();
    assert!(v.len() >= p.len() * d);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if d.is_multiple_of(64) && has!("avx2") && has!("fma") {
            // SAFETY: AVX2 and FMA detected; `v` holds `p.len()` rows of `d` (asserted), `d`
            // is a multiple of 64 as the kernel needs.
            return unsafe { avx2::weighted_sum(p, v, out) };
        }
    }
    out.fill(0.0);
    for (&w, vs) in p.iter().zip(v.chunks_exact(d)) {
        axpy(w, vs, out);
    }
}

/// `y[s] += Σ_r w[r] · rows[r][s]` for f16 rows (converted on the fly), every row at least
/// `y.len()` long: columns outermost, so `y` is loaded and stored once per 8 columns however
/// many rows there are.
pub fn axpy_rows_f16(w: &[f32], rows: &[&[f16]], y: &mut [f32]) {
    assert!(w.len() == rows.len() && rows.iter().all(|r| r.len() >= y.len()));
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            // SAFETY: AVX2, FMA and F16C detected; every row covers `y` (asserted).
            return unsafe { avx2::axpy_rows_f16(w, rows, y) };
        }
    }
    for (a, x) in w.iter().zip(rows) {
        for (y, x) in y.iter_mut().zip(x.iter()) {
            *y += a * x.to_f32();
        }
    }
}

/// Asks the CPU to start loading the cache line holding `x[at]` (a hint: no effect on
/// results; nothing happens out of bounds).
#[inline]
pub fn prefetch<T>(x: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = x.get(at) {
        // SAFETY: a prefetch never faults and does not change memory; `v` is a valid reference.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(v).cast(),
            )
        };
    }
}

/// Stores `src · scale` as f16 in `dst` (round to nearest even) and returns the sum, in f64,
/// of the stored values whose `pos` lies in `lo..hi`. f64 sums of f16 values are exact, so
/// the result does not depend on the order of the additions (SIMD lanes or not).
pub fn encode_f16(src: &[f32], scale: f32, dst: &mut [f16], pos: &[u32], lo: u32, hi: u32) -> f64 {
    assert!(src.len() == dst.len() && src.len() == pos.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("f16c") {
            // SAFETY: AVX2 and F16C detected; equal lengths (asserted).
            return unsafe { avx2::encode_f16(src, scale, dst, pos, (lo, hi)) };
        }
    }
    encode_f16_plain(src, scale, dst, pos, (lo, hi))
}

fn encode_f16_plain(
    src: &[f32],
    scale: f32,
    dst: &mut [f16],
    pos: &[u32],
    (lo, hi): (u32, u32),
) -> f64 {
    let mut sum = 0f64;
    for ((x, d), &p) in src.iter().zip(dst.iter_mut()).zip(pos) {
        *d = f16::from_f32(x * scale);
        if (lo..hi).contains(&p) {
            sum += f64::from(*d);
        }
    }
    sum
}

/// Softmax of `p` in place.
pub fn softmax(p: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            // SAFETY: AVX2 and FMA detected.
            return unsafe { avx2::softmax(p) };
        }
    }
    let max = p
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for x in p.iter_mut() {
        *x = exp_nonpositive(*x - max);
    }
    let inv = 1.0 / p.iter().sum::<f32>();
    for x in p.iter_mut() {
        *x *= inv;
    }
}

/// `silu(x) = x · sigmoid(x)` through [`exp_nonpositive`] (branch-free, so loops over it
/// become SIMD): `e = e^-|x|`, `sigmoid(x) = 1 / (1 + e)` for `x >= 0`, `e / (1 + e)` below.
#[inline]
pub fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
    x * sigmoid
}

/// `e^x` for `x <= 0` (softmax after subtracting the maximum), within 2 ulp of `f32::exp`
/// and branch-free, so a loop over it becomes SIMD: `x = k·ln 2 + r`, `e^r` by Cephes' degree
/// 6 polynomial, `2^k` by building the exponent bits.
#[inline]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below -87, e^x is under f32's smallest normal: 0 (the clamp keeps `2^k` normal).
    let tiny = x < -87.0;
    let x = x.max(-87.0);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let y = e * f32::from_bits(((k as i32 + 127) as u32) << 23);
    if tiny {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_blocks(kind: QKind, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let nb = rows * cols / BLOCK;
        let mut data = Vec::with_capacity(nb * kind.block_bytes());
        for _ in 0..nb {
            let d = f16::from_f32(rng.random_range(0.001..0.05)).to_bits();
            data.extend_from_slice(&d.to_le_bytes());
            match kind {
                QKind::Q4_1 => {
                    let m = f16::from_f32(rng.random_range(-0.2..0.2)).to_bits();
                    data.extend_from_slice(&m.to_le_bytes());
                    data.extend((0..16).map(|_| rng.random::<u8>()));
                }
                QKind::Q4_0 => data.extend((0..16).map(|_| rng.random::<u8>())),
                QKind::Q8_0 => data.extend((0..32).map(|_| rng.random::<u8>())),
            }
        }
        data
    }

    fn random_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-3.0..3.0)).collect()
    }

    const KINDS: [QKind; 3] = [QKind::Q4_0, QKind::Q4_1, QKind::Q8_0];

    #[test]
    fn simd_and_plain_dot_products_agree() {
        // 18 blocks per row (two groups of 8 and a pair), 7 (an odd partial group), 48.
        for (kind, cols) in KINDS.iter().flat_map(|&k| [(k, 576), (k, 224), (k, 1536)]) {
            let rows = 67;
            let data = random_blocks(kind, rows, cols, 1);
            let w = Packed::from_ggml(kind, rows, cols, &data).unwrap();
            let mut a = QActs::default();
            a.quantize(&random_vec(cols, 2));
            let mut plain = vec![0f32; rows];
            let mut fast = vec![0f32; rows];
            matvec_with(dot_plain, &w, &a, &mut plain);
            matvec(&w, &a, &mut fast);
            for (p, f) in plain.iter().zip(&fast) {
                assert!(
                    (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                    "{kind:?} {cols}: {p} vs {f}"
                );
            }
        }
    }

    #[test]
    fn quantized_products_match_dequantized_f32_arithmetic() {
        for kind in KINDS {
            let (rows, cols) = (40, 1536);
            let data = random_blocks(kind, rows, cols, 3);
            let w = Packed::from_ggml(kind, rows, cols, &data).unwrap();
            let x = random_vec(cols, 4);
            let mut a = QActs::default();
            a.quantize(&x);
            let mut got = vec![0f32; rows];
            matvec(&w, &a, &mut got);
            let mut dense = vec![0f32; rows * cols];
            for r in 0..rows {
                w.dequantize_row(r, &mut dense[r * cols..(r + 1) * cols]);
            }
            let mut want = vec![0f32; rows];
            matvec_f32(&dense, &x, &mut want);
            // 8-bit activations: relative error well under 1% of the row's magnitude.
            for r in 0..rows {
                let row = &dense[r * cols..(r + 1) * cols];
                let scale: f32 = row.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
                let err = (got[r] - want[r]).abs();
                assert!(
                    err < 0.01 * scale,
                    "{kind:?} row {r}: {} vs {}",
                    got[r],
                    want[r]
                );
            }
        }
    }

    #[test]
    fn activation_quantization_round_trips_within_half_a_step() {
        let x = random_vec(96, 5);
        let mut a = QActs::default();
        a.quantize(&x);
        for (i, v) in x.iter().enumerate() {
            let b = i / BLOCK;
            let back = a.q[i] as f32 * a.d[b];
            let sum: i32 = a.q[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .map(|&q| q as i32)
                .sum();
            let ds = a.d[b] * sum as f32;
            assert!((a.ds[b] - ds).abs() <= 2e-3 * ds.abs() + 1e-6);
            assert!((back - v).abs() <= 0.51 * a.d[b] + 1e-6);
        }
        let zeros = vec![0f32; 32];
        a.quantize(&zeros);
        assert_eq!(a.d, vec![0.0]);
        assert!(a.q.iter().all(|&q| q == 0));
    }

    #[test]
    fn fast_exp_matches_the_library_exp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -(i as f32) * 4.35e-4;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-200.0), 0.0);
    }

    #[test]
    fn attention_kernels_match_plain_loops() {
        for (d, n) in [(64, 37), (128, 8), (64, 3), (24, 5)] {
            let (q, k, v) = (
                random_vec(d, 8),
                random_vec(n * d, 9),
                random_vec(n * d, 10),
            );
            let mut got = vec![0f32; n];
            scores(&q, &k, 0.125, &mut got);
            for (s, g) in got.iter().enumerate() {
                let want: f32 = q.iter().zip(&k[s * d..]).map(|(a, b)| a * b).sum::<f32>() * 0.125;
                assert!(
                    (g - want).abs() < 1e-4 * want.abs().max(1.0),
                    "d {d} slot {s}"
                );
            }
            let p = random_vec(n, 11);
            let mut out = vec![7f32; d];
            weighted_sum(&p, &v, &mut out);
            for (i, o) in out.iter().enumerate() {
                let want: f32 = (0..n).map(|s| p[s] * v[s * d + i]).sum();
                assert!(
                    (o - want).abs() < 1e-4 * want.abs().max(1.0),
                    "d {d} value {i}"
                );
            }
        }
    }

    #[test]
    fn softmax_matches_the_library_exp() {
        for n in [1, 5, 8, 600, 603] {
            let mut p: Vec<f32> = random_vec(n, 12).iter().map(|x| x * 20.0).collect();
            p[0] = -150.0;
            let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f32 = p.iter().map(|x| (x - max).exp()).sum();
            let want: Vec<f32> = p.iter().map(|x| (x - max).exp() / sum).collect();
            softmax(&mut p);
            for (g, w) in p.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.max(1e-30) + 1e-37,
                    "n {n}: {g} vs {w}"
                );
            }
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn f16_row_sums_match_plain_arithmetic() {
        let n = 603;
        let data: Vec<Vec<f16>> = (0..5)
            .map(|r| {
                random_vec(n + r, 20 + r as u64)
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect()
            })
            .collect();
        let rows: Vec<&[f16]> = data.iter().map(|r| &r[..]).collect();
        let w = [0.5, -1.0, 2.0, 0.0, 0.25];
        let y0 = random_vec(n, 30);
        let mut y = y0.clone();
        axpy_rows_f16(&w, &rows, &mut y);
        for s in 0..n {
            let want = y0[s] + (0..5).map(|r| w[r] * rows[r][s].to_f32()).sum::<f32>();
            assert!(
                (y[s] - want).abs() < 1e-5 * want.abs().max(1.0),
                "column {s}"
            );
        }
    }

    #[test]
    fn f16_encoding_and_old_sums_match_plain_arithmetic() {
        for n in [5, 16, 603] {
            let src: Vec<f32> = random_vec(n, 40).iter().map(|v| v.abs() * 1e-3).collect();
            let pos: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % 1000).collect();
            for (lo, hi) in [(0, 0), (4, 500), (0, u32::MAX), (3_000_000_000, u32::MAX)] {
                // Destinations starting at every 2-byte offset from a 16-byte boundary (the
                // aligned part uses streaming stores, the rest the plain code).
                for skip in 0..8 {
                    let (mut a, mut b) = (vec![f16::ZERO; n + 8], vec![f16::ZERO; n]);
                    let got = encode_f16(&src, 32768.0, &mut a[skip..skip + n], &pos, lo, hi);
                    let want = encode_f16_plain(&src, 32768.0, &mut b, &pos, (lo, hi));
                    assert_eq!(a[skip..skip + n], b, "n {n} skip {skip}");
                    assert_eq!(got, want, "n {n} skip {skip} {lo}..{hi}");
                }
            }
        }
    }

    #[test]
    fn silu_matches_its_definition() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.05;
            let want = x / (1.0 + (-x).exp());
            assert!((silu(x) - want).abs() <= 1e-6 * want.abs().max(1e-3), "{x}");
        }
    }

    #[test]
    fn f32_dot_handles_any_length() {
        for n in [1, 7, 8, 9, 64, 77] {
            let (a, b) = (random_vec(n, 6), random_vec(n, 7));
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot_f32(&a, &b) - want).abs() < 1e-4 * want.abs().max(1.0));
        }
    }

    #[test]
    fn shapes_that_do_not_fit_blocks_are_refused() {
        assert!(Packed::from_ggml(QKind::Q8_0, 2, 48, &[0; 2 * 34]).is_none());
        assert!(Packed::from_ggml(QKind::Q4_1, 2, 64, &[0; 3 * 20]).is_none());
        assert!(Packed::from_ggml(QKind::Q4_1, 2, 64, &[0; 4 * 20]).is_some());
    }
}
