//! The K-quant row kernels of [`super`] in AVX-512 (BW, VNNI): two 32-value blocks per
//! instruction where AVX2 takes one. A block pair's weights fill one 512-bit register (the
//! first block in the low half, the next in the high half), its 64 activations come in one
//! load, and `maddubs` then `dpwssd` (VNNI's `madd` and add in one) sum them with the two
//! blocks' scales into sixteen i32 lanes. Once per super-block the two halves are added into
//! the eight lanes of the AVX2 kernel: integer sums, so the lanes hold exactly the AVX2
//! kernel's values, and everything after (minimums, offsets, scales, f32) is its code
//! (`finish45`, `finish6`). The results are bit-identical to the AVX2 kernels'.

use std::arch::x86_64::*;

use half::f16;

use super::{
    finish45, finish6, head45, hsum, packed_bytes, Acts, DUP, PICK45, PICK6, SCALES, SUBS, SUMS,
    SUPER,
};
use crate::kernels::quant::{QKind, BLOCK};

/// For block pair `j` (sub-blocks `2j`, `2j + 1`) of a Q4_K/Q5_K super-block: [`PICK45`] of
/// the first in the low 256 bits, of the second in the high.
const PICK45W: [[u8; 64]; SUBS / 2] = {
    let mut t = [[0u8; 64]; SUBS / 2];
    let mut j = 0;
    while j < SUBS / 2 {
        let mut i = 0;
        while i < 32 {
            t[j][i] = PICK45[2 * j][i];
            t[j][32 + i] = PICK45[2 * j + 1][i];
            i += 1;
        }
        j += 1;
    }
    t
};

/// For block pair `p` (blocks `2p`, `2p + 1`) of a Q6_K super-block: [`PICK6`] of the first
/// in the low 128 bits, of the second in the high.
const PICK6W: [[u8; 32]; SUBS / 2] = {
    let mut t = [[0u8; 32]; SUBS / 2];
    let mut p = 0;
    while p < SUBS / 2 {
        let mut i = 0;
        while i < 16 {
            t[p][i] = PICK6[2 * p][i];
            t[p][16 + i] = PICK6[2 * p + 1][i];
            i += 1;
        }
        p += 1;
    }
    t
};

/// Sixteen i16 lanes of `lo` in the low 256 bits, of `hi` in the high: per-half shift counts.
///
/// # Safety
///
/// The CPU runs AVX-512 F.
#[inline(always)]
unsafe fn halves(lo: i16, hi: i16) -> __m512i {
    // SAFETY: the CPU runs AVX-512 F (the caller's contract).
    unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi16(lo)),
            _mm256_set1_epi16(hi),
        )
    }
}

/// 32 bytes at `p` in both 256-bit halves.
///
/// # Safety
///
/// The CPU runs AVX-512 F; 32 bytes at `p` are readable.
#[inline(always)]
unsafe fn both_halves(p: *const u8) -> __m512i {
    // SAFETY: 32 bytes at `p`; the CPU runs AVX-512 F (the caller's contract).
    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast())) }
}

/// The sixteen i32 lanes of a block pair's sums folded to the AVX2 kernel's eight (exact).
///
/// # Safety
///
/// The CPU runs AVX-512 F and AVX2.
#[inline(always)]
unsafe fn fold(v: __m512i) -> __m256i {
    // SAFETY: the CPU runs AVX-512 F and AVX2 (the caller's contract).
    unsafe { _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v)) }
}

/// `isum + Σ pairs of (w · the 64 activations at qa) · sc` (`maddubs`, then `dpwssd`).
///
/// # Safety
///
/// The CPU runs AVX-512 BW and VNNI; 64 activations at `qa`.
#[inline(always)]
unsafe fn scaled_sum(isum: __m512i, w: __m512i, qa: *const i8, sc: __m512i) -> __m512i {
    // SAFETY: 64 activations at `qa`; the CPU runs AVX-512 BW and VNNI (the caller's
    // contract).
    unsafe {
        let a = _mm512_loadu_si512(qa.cast());
        _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(w, a), sc)
    }
}

/// [`super::q45`] with AVX-512: a Q4_K (`FIVE` false) or Q5_K row · a group of `N` tokens.
///
/// # Safety
///
/// As [`super::q45`], and the CPU runs AVX-512 F/BW/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q45<const N: usize, const FIVE: bool>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    ns: usize,
) -> [f32; N] {
    let pb = packed_bytes(if FIVE { QKind::Q5K } else { QKind::Q4K });
    let mut acc = [_mm256_setzero_ps(); N];
    // SAFETY: 16 bytes of `DUP`.
    let dup = unsafe { _mm_loadu_si128(DUP.as_ptr().cast()) };
    let (low4, bit4) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(0x10));
    // SAFETY: the CPU runs AVX-512 F (the caller's contract).
    // The low half takes the packed bytes' low nibbles (sub-block 2j), the high half their
    // high nibbles (2j + 1); Q5_K's fifth bit is bit 2j of `qh` for the first, 2j + 1 for
    // the second, moved to bit 4.
    let (nibble, fifth) = unsafe { (halves(0, 4), halves(4, 3)) };
    for i in 0..ns {
        // SAFETY: as the AVX2 kernel: super-block `i` of the row and of the group exist (the
        // caller's contract); the CPU runs AVX-512 F/BW/VNNI, AVX2, FMA and F16C.
        unsafe {
            let sb = q.add(i * pb);
            let (dw, dm, sc, mn) = head45(sb, d.add(i), m.add(i), dup);
            let sc = _mm512_broadcast_i32x4(sc);
            let mut isum = [_mm512_setzero_si512(); N];
            let mut qh = if FIVE {
                both_halves(sb.add(SCALES))
            } else {
                _mm512_setzero_si512()
            };
            let qs = sb.add(if FIVE { SCALES + 32 } else { SCALES });
            for (j, pick) in PICK45W.iter().enumerate() {
                let packed = both_halves(qs.add(32 * j));
                let mut w = _mm512_and_si512(_mm512_srlv_epi16(packed, nibble), low4);
                if FIVE {
                    // 16-bit shifts: what crosses into the other byte is masked off.
                    let top = _mm512_and_si512(_mm512_sllv_epi16(qh, fifth), bit4);
                    w = _mm512_or_si512(w, top);
                    qh = _mm512_srli_epi16::<2>(qh);
                }
                let scj = _mm512_shuffle_epi8(sc, _mm512_loadu_si512(pick.as_ptr().cast()));
                for (n, sum) in isum.iter_mut().enumerate() {
                    let qa = aq.add((N * i + n) * SUPER + 2 * j * BLOCK);
                    *sum = scaled_sum(*sum, w, qa, scj);
                }
            }
            for (n, sum) in isum.iter().enumerate() {
                let (da, sums) = (*ad.add(N * i + n), asum.add((N * i + n) * SUMS));
                finish45(&mut acc[n], fold(*sum), mn, sums, dw * da, dm * da);
            }
        }
    }
    let mut out = [0f32; N];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
    out
}

/// [`super::q6`] with AVX-512: a Q6_K row · a group of `N` tokens.
///
/// # Safety
///
/// As [`super::q6`], and the CPU runs AVX-512 F/BW/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q6<const N: usize>(
    d: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    ns: usize,
) -> [f32; N] {
    let pb = packed_bytes(QKind::Q6K);
    let mut acc = [_mm256_setzero_ps(); N];
    let (low4, top2) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(0x30));
    // SAFETY: the CPU runs AVX-512 F (the caller's contract).
    // Blocks 4h and 4h + 1 take `qh` moved up by 4 and 2, blocks 4h + 2 and 4h + 3 by 0 and
    // down by 2 (the AVX2 kernel's four shifts, two per register).
    let (up, down) = unsafe { (halves(4, 2), halves(0, 2)) };
    for i in 0..ns {
        // SAFETY: as the AVX2 kernel: super-block `i` of the row and of the group exist (the
        // caller's contract); the CPU runs AVX-512 F/BW/VNNI, AVX2, FMA and F16C.
        unsafe {
            let sb = q.add(i * pb);
            let dw = f16::from_bits(*d.add(i)).to_f32();
            let scales = _mm_loadu_si128(sb.cast());
            let scales2 = _mm256_broadcastsi128_si256(scales);
            let mut isum = [_mm512_setzero_si512(); N];
            for h in 0..2 {
                // The AVX2 kernel's `ql0` in the low half, `ql1` in the high.
                let ql = _mm512_loadu_si512(sb.add(SCALES + 64 * h).cast());
                let qh = both_halves(sb.add(SCALES + 128 + 32 * h));
                let pairs = [
                    (ql, _mm512_sllv_epi16(qh, up)),
                    (_mm512_srli_epi16::<4>(ql), _mm512_srlv_epi16(qh, down)),
                ];
                for (p, (low, top)) in pairs.into_iter().enumerate() {
                    let w =
                        _mm512_or_si512(_mm512_and_si512(low, low4), _mm512_and_si512(top, top2));
                    let c = 4 * h + 2 * p;
                    let pick = _mm256_loadu_si256(PICK6W[c / 2].as_ptr().cast());
                    let sc = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(scales2, pick));
                    for (n, sum) in isum.iter_mut().enumerate() {
                        let qa = aq.add((N * i + n) * SUPER + c * BLOCK);
                        *sum = scaled_sum(*sum, w, qa, sc);
                    }
                }
            }
            let sc16 = _mm256_cvtepi8_epi16(scales);
            for (n, sum) in isum.iter().enumerate() {
                let sums = asum.add((N * i + n) * SUMS);
                finish6(&mut acc[n], fold(*sum), sc16, sums, dw * *ad.add(N * i + n));
            }
        }
    }
    let mut out = [0f32; N];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
    out
}
