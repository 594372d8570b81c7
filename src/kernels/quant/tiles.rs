//! Q4_K, Q5_K and Q6_K rows interleaved in tiles of [`TILE`] rows × one super-block, for the
//! AVX2 and AVX-512 kernels (`super::super::x86::kquant::tiled`): there a register's sixteen
//! 32-bit lanes are sixteen rows (AVX2: eight, a half tile), each lane four consecutive values of its row, so one `maddubs` and
//! one `dpwssd` serve sixteen rows against four activations broadcast to every lane, and a
//! super-block's scales, minimums and `d` meet sixteen rows at once: no per-row horizontal
//! sum, no per-row finish. Same bytes as the row layout (`super::kquant`), another order.
//!
//! A tile of rows `16t..16t + 16` and super-block `i`, row `r` (0..16) of it, value `v`
//! (0..256) of the row's super-block:
//! - Q4_K (2,304 bytes): `sc[s][r]` (s < 8, 128 bytes), `mn[s][r]` (128), then
//!   `qs[s][k][r][j]` (k < 4, j < 4; 2,048): the low nibble value `32s + 4k + j`, the high
//!   one value `32s + 16 + 4k + j`.
//! - Q5_K (2,816 bytes): as Q4_K with `qh[s][r][j]` (512 bytes) between `mn` and `qs`: bit `k`
//!   the fifth bit (16) of value `32s + 4k + j`, bit `4 + k` that of value `32s + 16 + 4k + j`.
//! - Q6_K (3,328 bytes): `sc[p][r][2]` (p < 8; the i8 scales of 16-value sub-blocks `2p` and
//!   `2p + 1`; 256 bytes), then per `p` (384 bytes): `ql[k][r][j]` (k < 4; 256): the low four
//!   bits of value `32p + 4k + j` in the low nibble, of `32p + 16 + 4k + j` in the high one;
//!   `qh[h][r][j]` (h < 2; 128): bits `2b, 2b + 1` hold the top two bits of value
//!   `32p + 16(b / 2) + 4(2h + b % 2) + j`, `b` < 4.
//!
//! The tile's sixteen `d` (and Q4_K `dmin`) follow one another in [`super::Packed`]'s scale
//! arrays, tile by tile in the same order as the values (row tile, then super-block).

use half::f16;

use super::kquant::{packed_bytes, SCALES, SUPER};
use super::QKind;

/// Rows per tile.
pub const TILE: usize = 16;

/// Whether `kind`'s rows can be tiled: the K-quants, rows a multiple of [`TILE`].
pub(super) fn fits(kind: QKind, rows: usize) -> bool {
    kind.is_k() && rows.is_multiple_of(TILE)
}

/// Offset of Q5_K's fifth bits in a tile.
pub(in crate::kernels) const Q5_HIGH: usize = 256;

/// Offset of a Q4_K or Q5_K tile's `qs`.
pub(in crate::kernels) fn q45_values(kind: QKind) -> usize {
    if kind == QKind::Q5K {
        Q5_HIGH + 512
    } else {
        256
    }
}

/// Bytes of a tile's values (besides its `d` and `dmin`): [`TILE`] rows' repacked
/// super-blocks.
pub(in crate::kernels) fn tile_bytes(kind: QKind) -> usize {
    TILE * packed_bytes(kind)
}

/// Offset of Q6_K's pairs of 16-value sub-blocks in a tile (after the scales).
pub(in crate::kernels) const Q6_PAIRS: usize = 256;

/// Bytes per Q6_K pair of sub-blocks: `ql` then `qh`.
pub(in crate::kernels) const Q6_PAIR: usize = 384;

/// A super-block's 256 values, unsigned (Q4_K 0..16, Q6_K 0..64), from its row-layout bytes
/// `sb` ([`super::kquant`]'s).
fn values(kind: QKind, sb: &[u8]) -> [u8; SUPER] {
    let mut v = [0u8; SUPER];
    if kind != QKind::Q6K {
        let five = kind == QKind::Q5K;
        let (qh, qs) = sb[SCALES..].split_at(if five { 32 } else { 0 });
        for (j, bytes) in qs[..128].chunks_exact(32).enumerate() {
            for (l, &b) in bytes.iter().enumerate() {
                let top = |bit: usize| if five { (qh[l] >> bit) & 1 } else { 0 };
                v[64 * j + l] = b & 0xF | top(2 * j) << 4;
                v[64 * j + 32 + l] = b >> 4 | top(2 * j + 1) << 4;
            }
        }
    } else {
        let (ql, qh) = (&sb[SCALES..SCALES + 128], &sb[SCALES + 128..SCALES + 192]);
        for h in 0..2 {
            for k in 0..4 {
                for l in 0..32 {
                    let b = ql[64 * h + 32 * (k & 1) + l];
                    let low = if k < 2 { b & 0xF } else { b >> 4 };
                    let top = (qh[32 * h + l] >> (2 * k)) & 3;
                    v[128 * h + 32 * k + l] = low | top << 4;
                }
            }
        }
    }
    v
}

/// The inverse of [`values`]: 256 unsigned values into a row-layout super-block's value bytes
/// (its scales untouched).
fn put_values(kind: QKind, v: &[u8; SUPER], sb: &mut [u8]) {
    if kind != QKind::Q6K {
        let five = kind == QKind::Q5K;
        let (qh, qs) = sb[SCALES..].split_at_mut(if five { 32 } else { 0 });
        qh.fill(0);
        for (i, b) in qs[..128].iter_mut().enumerate() {
            let (j, l) = (i / 32, i % 32);
            let (x, y) = (v[64 * j + l], v[64 * j + 32 + l]);
            *b = (x & 0xF) | (y & 0xF) << 4;
            if five {
                qh[l] |= (x >> 4) << (2 * j) | (y >> 4) << (2 * j + 1);
            }
        }
    } else {
        let (ql, qh) = sb[SCALES..SCALES + 192].split_at_mut(128);
        ql.fill(0);
        qh.fill(0);
        for h in 0..2 {
            for k in 0..4 {
                for l in 0..32 {
                    let x = v[128 * h + 32 * k + l];
                    ql[64 * h + 32 * (k & 1) + l] |= (x & 0xF) << if k < 2 { 0 } else { 4 };
                    qh[32 * h + l] |= (x >> 4) << (2 * k);
                }
            }
        }
    }
}

/// Q6_K: where value `32p + 16·a + 4·q + j` (a < 2, q < 4, j < 4) of row `r` keeps its top
/// two bits in pair `p`'s `qh`: the byte's offset in the pair's `qh` and the bit's shift.
#[inline]
fn q6_top(a: usize, q: usize, r: usize, j: usize) -> (usize, usize) {
    let (h, b) = (q / 2, 2 * a + q % 2);
    (64 * h + 4 * r + j, 2 * b)
}

/// [`TILE`] rows' super-blocks in the row layout (`rows[r]`, [`packed_bytes`] each) into one
/// tile (`tile`, [`tile_bytes`]).
pub(super) fn tile(kind: QKind, rows: &[&[u8]; TILE], tile: &mut [u8]) {
    match kind {
        QKind::Q4K | QKind::Q5K => {
            let qs = q45_values(kind);
            for (r, sb) in rows.iter().enumerate() {
                for s in 0..8 {
                    tile[TILE * s + r] = sb[s];
                    tile[128 + TILE * s + r] = sb[8 + s];
                }
                let v = values(kind, sb);
                for s in 0..8 {
                    let mut high = [0u8; 4];
                    for k in 0..4 {
                        for (j, h) in high.iter_mut().enumerate() {
                            let x = 32 * s + 4 * k + j;
                            tile[qs + 256 * s + 64 * k + 4 * r + j] = (v[x] & 0xF) | v[x + 16] << 4;
                            *h |= (v[x] >> 4) << k | (v[x + 16] >> 4) << (4 + k);
                        }
                    }
                    if kind == QKind::Q5K {
                        tile[Q5_HIGH + 64 * s + 4 * r..][..4].copy_from_slice(&high);
                    }
                }
            }
        }
        _ => {
            tile[Q6_PAIRS..].fill(0);
            for (r, sb) in rows.iter().enumerate() {
                for p in 0..8 {
                    tile[32 * p + 2 * r] = sb[2 * p];
                    tile[32 * p + 2 * r + 1] = sb[2 * p + 1];
                }
                let v = values(kind, sb);
                for p in 0..8 {
                    let pair = &mut tile[Q6_PAIRS + Q6_PAIR * p..Q6_PAIRS + Q6_PAIR * (p + 1)];
                    let (ql, qh) = pair.split_at_mut(256);
                    for a in 0..2 {
                        for q in 0..4 {
                            for j in 0..4 {
                                let x = v[32 * p + 16 * a + 4 * q + j];
                                ql[64 * q + 4 * r + j] |= (x & 0xF) << (4 * a);
                                let (at, shift) = q6_top(a, q, r, j);
                                qh[at] |= (x >> 4) << shift;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Row `r` of a tile back in the row layout: its super-block's [`packed_bytes`] bytes.
pub(super) fn untile(kind: QKind, tile: &[u8], r: usize) -> Vec<u8> {
    let mut sb = vec![0u8; packed_bytes(kind)];
    let mut v = [0u8; SUPER];
    match kind {
        QKind::Q4K | QKind::Q5K => {
            let qs = q45_values(kind);
            for s in 0..8 {
                sb[s] = tile[TILE * s + r];
                sb[8 + s] = tile[128 + TILE * s + r];
                for k in 0..4 {
                    for j in 0..4 {
                        let b = tile[qs + 256 * s + 64 * k + 4 * r + j];
                        let h = if kind == QKind::Q5K {
                            tile[Q5_HIGH + 64 * s + 4 * r + j]
                        } else {
                            0
                        };
                        let x = 32 * s + 4 * k + j;
                        v[x] = b & 0xF | ((h >> k) & 1) << 4;
                        v[x + 16] = b >> 4 | ((h >> (4 + k)) & 1) << 4;
                    }
                }
            }
        }
        _ => {
            for p in 0..8 {
                sb[2 * p] = tile[32 * p + 2 * r];
                sb[2 * p + 1] = tile[32 * p + 2 * r + 1];
                let pair = &tile[Q6_PAIRS + Q6_PAIR * p..Q6_PAIRS + Q6_PAIR * (p + 1)];
                for a in 0..2 {
                    for q in 0..4 {
                        for j in 0..4 {
                            let low = (pair[64 * q + 4 * r + j] >> (4 * a)) & 0xF;
                            let (at, shift) = q6_top(a, q, r, j);
                            let top = (pair[256 + at] >> shift) & 3;
                            v[32 * p + 16 * a + 4 * q + j] = low | top << 4;
                        }
                    }
                }
            }
        }
    }
    put_values(kind, &v, &mut sb);
    sb
}

/// Row `r` (of all rows) of a tiled matrix in the row layout: its `d`, `dmin` (empty for
/// Q6_K) and repacked super-blocks, from the matrix's tiled `d`, `m` and `qs` of `ns`
/// super-blocks a row.
pub(super) fn row(
    kind: QKind,
    ns: usize,
    (d, m, qs): (&[f16], &[f16], &[u8]),
    r: usize,
) -> (Vec<f16>, Vec<f16>, Vec<u8>) {
    let (t, rr, tb) = (r / TILE, r % TILE, tile_bytes(kind));
    let at = |i: usize| (t * ns + i) * TILE + rr;
    let dr = (0..ns).map(|i| d[at(i)]).collect();
    let mr = if m.is_empty() {
        Vec::new()
    } else {
        (0..ns).map(|i| m[at(i)]).collect()
    };
    let qr = (0..ns)
        .flat_map(|i| {
            let from = (t * ns + i) * tb;
            untile(kind, &qs[from..from + tb], rr)
        })
        .collect();
    (dr, mr, qr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every byte pattern: row-layout super-blocks tiled and back are unchanged, and a value
    /// lands where the layout above says.
    #[test]
    fn tiles_round_trip_and_follow_the_documented_layout() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let pb = packed_bytes(kind);
            let rows: Vec<Vec<u8>> = (0..TILE)
                .map(|_| {
                    let mut sb: Vec<u8> = (0..pb).map(|_| rng.random()).collect();
                    if kind != QKind::Q6K {
                        // Decoded 6-bit scales and minimums, as `kquant::repack` writes them.
                        sb[..SCALES].iter_mut().for_each(|b| *b &= 63);
                    }
                    sb
                })
                .collect();
            let refs: [&[u8]; TILE] = std::array::from_fn(|r| &rows[r][..]);
            let mut t = vec![0u8; tile_bytes(kind)];
            tile(kind, &refs, &mut t);
            for (r, sb) in rows.iter().enumerate() {
                assert_eq!(&untile(kind, &t, r), sb, "{kind:?} row {r}");
                let v = values(kind, sb);
                // Value 32·3 + 16 + 4·2 + 1 of row r (Q4_K: sub-block 3, k = 2, j = 1, high
                // nibble; Q6_K: pair 3, a = 1, q = 2, j = 1).
                let x = v[32 * 3 + 16 + 4 * 2 + 1];
                if kind != QKind::Q6K {
                    let low = t[q45_values(kind) + 256 * 3 + 64 * 2 + 4 * r + 1] >> 4;
                    let top = if kind == QKind::Q5K {
                        (t[Q5_HIGH + 64 * 3 + 4 * r + 1] >> (4 + 2)) & 1
                    } else {
                        0
                    };
                    assert_eq!(low | top << 4, x);
                    assert_eq!(t[TILE * 5 + r], sb[5]);
                } else {
                    let pair = &t[Q6_PAIRS + Q6_PAIR * 3..];
                    let low = pair[64 * 2 + 4 * r + 1] >> 4;
                    let top = (pair[256 + 64 + 4 * r + 1] >> 4) & 3;
                    assert_eq!(low | top << 4, x);
                    assert_eq!(t[32 * 5 + 2 * r + 1], sb[11]);
                }
            }
        }
    }
}
