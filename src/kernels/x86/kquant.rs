//! The K-quants' (Q4_K, Q5_K, Q6_K) row kernels in AVX2: one weight row against one row of
//! 8-bit activations (decoding) or four (a prompt, each super-block unpacked once for the
//! four). `crate::kernels::quant::kquant::dot_plain` is their plain twin and describes the
//! repacked layout read here.
//!
//! Per 32 values: the weights unpacked to 32 unsigned bytes in the activations' order,
//! multiplied with them by `maddubs` (unsigned × signed) into i16 pairs, summed to i32 by
//! `madd` (Q6_K: with its two 16-value scales), converted, and added scaled by `d·sc·da`
//! (Q6_K `d·da`) into f32 lanes. Once per super-block, eight blocks at a time: the Q4_K/Q5_K
//! minimums (`dmin·m·ds`), the Q6_K offset (`32·d·da·Σ sc·(sum of 16 activations)`).

use std::arch::x86_64::*;

use half::f16;

use super::avx2::hsum;
use super::{Avx2, Vnni};
use crate::kernels::quant::kquant::{packed_bytes, SCALES, SUPER};
use crate::kernels::quant::{Packed, QActs, QKind, BLOCK};

/// Activation blocks per super-block.
const SUBS: usize = SUPER / BLOCK;

/// Row `r` of `w` (a K-quant) · the activations `a`. Panics unless `w` is a K-quant and `a`
/// holds `w.cols()` activations.
pub fn dot(cpu: Avx2, w: &Packed, r: usize, a: &QActs) -> f32 {
    rows(cpu, w, r, [a])[0]
}

/// [`dot`] on a CPU with AVX-512 VNNI (which runs AVX2, FMA and F16C: the [`Vnni`] token is
/// made only from an [`Avx2`] one): the AVX2 kernel.
pub fn dot_vnni(_cpu: Vnni, w: &Packed, r: usize, a: &QActs) -> f32 {
    dot(Avx2(()), w, r, a)
}

/// Row `r` of `w` (a K-quant) · each of the four activations `a`, each super-block unpacked
/// once. Panics unless `w` is a K-quant and every `a[i]` holds `w.cols()` activations.
pub fn dot4(cpu: Avx2, w: &Packed, r: usize, a: [&QActs; 4]) -> [f32; 4] {
    rows(cpu, w, r, a)
}

/// Row `r` of `w` · each of `a`, after checking every read the kernels make is in bounds.
fn rows<const N: usize>(_cpu: Avx2, w: &Packed, r: usize, a: [&QActs; N]) -> [f32; N] {
    let kind = w.kind();
    assert!(kind.is_k(), "{kind:?} is not a K-quant");
    let (d, m, qs) = w.row(r);
    let ns = d.len();
    assert!(qs.len() == ns * packed_bytes(kind));
    assert!(m.len() == if kind == QKind::Q6K { 0 } else { ns });
    for x in &a {
        let nb = ns * SUBS;
        assert!(x.q.len() >= nb * BLOCK && x.d.len() >= nb && x.ds.len() >= nb);
        assert!(x.s16.len() >= 2 * nb);
    }
    let (d, m, q) = (
        d.as_ptr().cast::<u16>(),
        m.as_ptr().cast::<u16>(),
        qs.as_ptr(),
    );
    // SAFETY: the token proves AVX2, FMA and F16C; the asserts above bound every read: `ns`
    // super-blocks of `kind`'s repacked bytes, `ns` `dmin`s where the kernel reads them, and
    // `ns · 256` activations (and `ns · 16` sums of 16) in each of `a`.
    unsafe {
        match kind {
            QKind::Q4K => q45::<N, false>(d, m, q, a, ns),
            QKind::Q5K => q45::<N, true>(d, m, q, a, ns),
            _ => q6::<N>(d, q, a, ns),
        }
    }
}

/// The unsigned weight bytes `w` (0..64) × the 32 activations at `qa`, adjacent products
/// summed: sixteen i16 lanes (at most 2·63·127 in size, no saturation).
///
/// # Safety
///
/// The CPU runs AVX2; `qa` points to 32 activations.
#[inline(always)]
unsafe fn sum_pairs(w: __m256i, qa: *const i8) -> __m256i {
    // SAFETY: 32 activations at `qa` (the caller's contract); the CPU runs AVX2.
    unsafe { _mm256_maddubs_epi16(w, _mm256_loadu_si256(qa.cast())) }
}

/// Eight unsigned bytes at `p` as f32 lanes.
///
/// # Safety
///
/// The CPU runs AVX2; `p` points to 8 bytes.
#[target_feature(enable = "avx2")]
unsafe fn bytes8(p: *const u8) -> __m256 {
    // SAFETY: 8 bytes at `p` (the caller's contract).
    let b = unsafe { _mm_loadl_epi64(p.cast()) };
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
}

/// Q4_K (`FIVE` false) or Q5_K rows · `N` activation rows. For `N == 1` the odd sub-blocks
/// go to a second accumulator, so two chains of additions run at once.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; `d`, `m` point to `ns` f16 values, `q` to `ns` repacked
/// super-blocks of the kind, each of `a` holds `ns · 256` activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45<const N: usize, const FIVE: bool>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    a: [&QActs; N],
    ns: usize,
) -> [f32; N] {
    let pb = packed_bytes(if FIVE { QKind::Q5K } else { QKind::Q4K });
    let odd = usize::from(N == 1);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut scale = [[0f32; SUBS]; N];
    let (low4, bit4, ones) = (
        _mm256_set1_epi8(0xF),
        _mm256_set1_epi8(0x10),
        _mm256_set1_epi16(1),
    );
    for i in 0..ns {
        // SAFETY: super-block `i` (`pb` bytes at `q + i·pb`, `d[i]`, `m[i]`) and activation
        // blocks `8i..8i + 8` exist (the caller's contract); the CPU runs AVX2, FMA and F16C.
        unsafe {
            let sb = q.add(i * pb);
            let dw = _mm256_set1_ps(f16::from_bits(*d.add(i)).to_f32());
            let dm = _mm256_set1_ps(f16::from_bits(*m.add(i)).to_f32());
            let sc = _mm256_mul_ps(dw, bytes8(sb));
            let mn = _mm256_mul_ps(dm, bytes8(sb.add(8)));
            for (n, x) in a.iter().enumerate() {
                let ad = _mm256_loadu_ps(x.d.as_ptr().add(i * SUBS));
                let ads = _mm256_loadu_ps(x.ds.as_ptr().add(i * SUBS));
                _mm256_storeu_ps(scale[n].as_mut_ptr(), _mm256_mul_ps(sc, ad));
                acc[n][0] = _mm256_fnmadd_ps(mn, ads, acc[n][0]);
            }
            // Read back from memory: a broadcast load per sub-block (a load port), where the
            // compiler would otherwise shuffle the lanes out of the register (a vector port).
            // `&mut`: the compiler must assume the values changed, and load them.
            #[allow(clippy::unnecessary_mut_passed)]
            let scale: &[[f32; SUBS]; N] = std::hint::black_box(&mut scale);
            // Q5_K: bits 2j, 2j + 1 of each `qh` byte shifted down to bits 0, 1 for pair `j`.
            let mut qh = if FIVE {
                _mm256_loadu_si256(sb.add(SCALES).cast())
            } else {
                _mm256_setzero_si256()
            };
            let qs = sb.add(if FIVE { SCALES + 32 } else { SCALES });
            for j in 0..SUBS / 2 {
                let packed = _mm256_loadu_si256(qs.add(32 * j).cast());
                let mut lo = _mm256_and_si256(packed, low4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
                if FIVE {
                    // 16-bit shifts: what crosses into the other byte is masked off.
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
                    qh = _mm256_srli_epi16(qh, 2);
                }
                let b = i * SUBS + 2 * j;
                for (n, x) in a.iter().enumerate() {
                    let qa = x.q.as_ptr().add(b * BLOCK);
                    let s0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum_pairs(lo, qa), ones));
                    let s1 =
                        _mm256_cvtepi32_ps(_mm256_madd_epi16(sum_pairs(hi, qa.add(BLOCK)), ones));
                    acc[n][0] = _mm256_fmadd_ps(_mm256_set1_ps(scale[n][2 * j]), s0, acc[n][0]);
                    acc[n][odd] =
                        _mm256_fmadd_ps(_mm256_set1_ps(scale[n][2 * j + 1]), s1, acc[n][odd]);
                }
            }
        }
    }
    let mut out = [0f32; N];
    for (o, [a0, a1]) in out.iter_mut().zip(acc) {
        *o = hsum(_mm256_add_ps(a0, a1));
    }
    out
}

/// For 32-value block `c` (0..8) of a Q6_K super-block, a shuffle of its sixteen scales
/// (in both 128-bit lanes) into i16 lanes holding `sc[2c] << 8` (low lane: values 0..16) or
/// `sc[2c + 1] << 8` (high lane): the scale in the high byte, so the sign carries over.
const PICK: [[u8; 32]; SUBS] = {
    let mut t = [[0x80u8; 32]; SUBS];
    let mut c = 0;
    while c < SUBS {
        let mut i = 0;
        while i < 8 {
            t[c][2 * i + 1] = 2 * c as u8;
            t[c][16 + 2 * i + 1] = 2 * c as u8 + 1;
            i += 1;
        }
        c += 1;
    }
    t
};

/// Q6_K rows · `N` activation rows. Each 32-value block's unsigned `q` (0..64) × the
/// activations in `maddubs`, then `madd` with its two 16-value scales (×256, see [`PICK`]);
/// the `−32` of every value once per super-block, from the activations' sums of 16.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; `d` points to `ns` f16 values, `q` to `ns` repacked Q6_K
/// super-blocks, each of `a` holds `ns · 256` activations and `ns · 16` sums of 16.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6<const N: usize>(d: *const u16, q: *const u8, a: [&QActs; N], ns: usize) -> [f32; N] {
    let pb = packed_bytes(QKind::Q6K);
    let odd = usize::from(N == 1);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut scale = [[0f32; SUBS]; N];
    let (low4, top2) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
    for i in 0..ns {
        // SAFETY: super-block `i` (`pb` bytes at `q + i·pb`, `d[i]`) and activation blocks
        // `8i..8i + 8` exist (the caller's contract); the CPU runs AVX2, FMA and F16C.
        unsafe {
            let sb = q.add(i * pb);
            let dw = _mm256_set1_ps(f16::from_bits(*d.add(i)).to_f32());
            let scales = _mm_loadu_si128(sb.cast());
            let (sc16, both) = (
                _mm256_cvtepi8_epi16(scales),
                _mm256_broadcastsi128_si256(scales),
            );
            for (n, x) in a.iter().enumerate() {
                let dd = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(i * SUBS)));
                // Lane c: sc[2c]·Σ(first 16 of block c) + sc[2c + 1]·Σ(its last 16).
                let sums = _mm256_loadu_si256(x.s16.as_ptr().add(i * 2 * SUBS).cast());
                let off = _mm256_cvtepi32_ps(_mm256_madd_epi16(sc16, sums));
                let dd32 = _mm256_mul_ps(dd, _mm256_set1_ps(32.0));
                acc[n][0] = _mm256_fnmadd_ps(dd32, off, acc[n][0]);
                let unscaled = _mm256_mul_ps(dd, _mm256_set1_ps(1.0 / 256.0));
                _mm256_storeu_ps(scale[n].as_mut_ptr(), unscaled);
            }
            // Read back from memory (see `q45`).
            // `&mut`: the compiler must assume the values changed, and load them.
            #[allow(clippy::unnecessary_mut_passed)]
            let scale: &[[f32; SUBS]; N] = std::hint::black_box(&mut scale);
            for h in 0..2 {
                let ql0 = _mm256_loadu_si256(sb.add(SCALES + 64 * h).cast());
                let ql1 = _mm256_loadu_si256(sb.add(SCALES + 64 * h + 32).cast());
                let qh = _mm256_loadu_si256(sb.add(SCALES + 128 + 32 * h).cast());
                // 16-bit shifts: what crosses into the other byte is masked off.
                let qk = [
                    (ql0, _mm256_slli_epi16(qh, 4)),
                    (ql1, _mm256_slli_epi16(qh, 2)),
                    (_mm256_srli_epi16(ql0, 4), qh),
                    (_mm256_srli_epi16(ql1, 4), _mm256_srli_epi16(qh, 2)),
                ];
                for (k, (low, top)) in qk.into_iter().enumerate() {
                    let w =
                        _mm256_or_si256(_mm256_and_si256(low, low4), _mm256_and_si256(top, top2));
                    let c = 4 * h + k;
                    let sc = _mm256_shuffle_epi8(both, _mm256_loadu_si256(PICK[c].as_ptr().cast()));
                    let t = if k % 2 == 1 { odd } else { 0 };
                    for (n, x) in a.iter().enumerate() {
                        let qa = x.q.as_ptr().add((i * SUBS + c) * BLOCK);
                        let s = _mm256_madd_epi16(sum_pairs(w, qa), sc);
                        let s = _mm256_cvtepi32_ps(s);
                        acc[n][t] = _mm256_fmadd_ps(_mm256_set1_ps(scale[n][c]), s, acc[n][t]);
                    }
                }
            }
        }
    }
    let mut out = [0f32; N];
    for (o, [a0, a1]) in out.iter_mut().zip(acc) {
        *o = hsum(_mm256_add_ps(a0, a1));
    }
    out
}
