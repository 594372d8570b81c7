//! GGML's quantized blocks (Q4_0, Q4_1, Q8_0, and the K-quants Q4_K, Q5_K, Q6_K through
//! `kquant`) repacked for the kernels, activations quantized
//! to 8 bits per 32-value block (as llama.cpp does), and matrix × vector products over them and
//! over dense f32 rows, rows split across the rayon pool. Everything here is plain Rust: the
//! row dot product [`dot_plain`] is the portable twin of the x86 kernels in `super::x86`, which
//! [`super::matvec`] picks instead where the CPU runs them.

use half::f16;
use rayon::prelude::*;

pub(super) mod kquant;
pub(super) mod tiles;

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
    /// 256-value super-blocks `{d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]}`: eight
    /// sub-blocks of 32 with a 6-bit scale `sc` and minimum `m`: value = d·sc·nibble − dmin·m.
    Q4K,
    /// As [`QKind::Q4K`] with a fifth bit per value in `qh: [u8; 32]` (after `scales`).
    Q5K,
    /// 256-value super-blocks `{ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16}`:
    /// sixteen sub-blocks of 16 with an 8-bit scale `sc`: value = d·sc·(q − 32), q of 6 bits.
    Q6K,
}

impl QKind {
    /// Bytes per GGML block (of [`QKind::block_values`] values).
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Values per GGML block: 32, or 256 for the K-quants' super-blocks.
    pub fn block_values(self) -> usize {
        if self.is_k() {
            kquant::SUPER
        } else {
            BLOCK
        }
    }

    /// Whether this is a K-quant (256-value super-blocks).
    pub fn is_k(self) -> bool {
        matches!(self, Self::Q4K | Self::Q5K | Self::Q6K)
    }
}

/// A quantized matrix repacked for the kernels: each row's block scales (and Q4_1 minimums)
/// in arrays of their own, so eight are converted and multiplied at once, and the packed
/// values in another. Same bytes as the GGUF blocks, another order (the K-quants: their
/// 6-bit scales decoded to bytes, 4 bytes more per 256 values for Q4_K and Q5_K; see
/// `kquant`); K-quant rows in tiles of sixteen where the CPU has the kernels for them
/// (`tiles`).
#[derive(Debug)]
pub struct Packed {
    kind: QKind,
    rows: usize,
    cols: usize,
    /// (rows, blocks) block scales (super-block scales for the K-quants).
    d: Vec<f16>,
    /// (rows, blocks) Q4_1 minimums, Q4_K/Q5_K super-block `dmin`; empty for the other kinds.
    m: Vec<f16>,
    /// (rows, blocks, [`p_values`]) nibbles (value j in the low half of byte j, value j + 16
    /// in its high half) or bytes; the K-quants' layouts are `kquant`'s.
    qs: Values,
    /// K-quant rows interleaved in tiles of 16 (`tiles`' layout; `d` and `m` too) for the
    /// AVX2 and AVX-512 kernels, instead of one row after the other.
    tiled: bool,
}

/// A matrix's packed values, in pages of their own: an anonymous mapping that Linux is asked
/// to back with 2 MiB pages (transparent huge pages, where the system leaves them to
/// `madvise`, Debian's default). A decoding step streams every weight once; with 4 KiB pages
/// the hardware prefetchers stop at each page's end and every page costs a TLB miss. From the
/// heap the pages would often be ones already touched (a tensor's bytes read and freed just
/// before), which stay small. Where no mapping can be made, a `Vec`.
#[derive(Debug)]
enum Values {
    Mapped(memmap2::MmapMut),
    Heap(Vec<u8>),
}

impl Values {
    /// `len` zero bytes.
    fn zeroed(len: usize) -> Self {
        match memmap2::MmapMut::map_anon(len) {
            Ok(map) if len > 0 => {
                #[cfg(target_os = "linux")]
                // A hint: a kernel without transparent huge pages refuses it, and nothing changes.
                let _ = map.advise(memmap2::Advice::HugePage);
                Self::Mapped(map)
            }
            _ => Self::Heap(vec![0; len]),
        }
    }
}

impl std::ops::Deref for Values {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for Values {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Heap(v) => v,
        }
    }
}

impl Packed {
    /// Repacks `data` (GGML blocks, row-major, as in a GGUF file); `None` if `cols` is not a
    /// multiple of the kind's block (32 values, 256 for the K-quants) or the length does not
    /// match. K-quant matrices of whole tiles are tiled where this CPU has the kernels
    /// for them (AVX2).
    pub fn from_ggml(kind: QKind, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        let tiled = tiles::fits(kind, rows) && super::tiles_pay();
        Self::from_ggml_as(kind, rows, cols, data, tiled)
    }

    /// [`Packed::from_ggml`] in the layout asked for: `tiled` (which must fit, `tiles::fits`)
    /// or row after row.
    pub(super) fn from_ggml_as(
        kind: QKind,
        rows: usize,
        cols: usize,
        data: &[u8],
        tiled: bool,
    ) -> Option<Self> {
        let bb = kind.block_bytes();
        let nb = rows * (cols / kind.block_values());
        if !cols.is_multiple_of(kind.block_values()) || data.len() != nb * bb {
            return None;
        }
        if tiled {
            assert!(
                tiles::fits(kind, rows),
                "{kind:?} × {rows} rows does not tile"
            );
            return Some(Self::tiled_from(kind, rows, cols, data));
        }
        // Block by block across the rayon pool (a 1B model has millions of blocks).
        let v = p_values(kind);
        let mut qs = Values::zeroed(nb * v);
        let d = data
            .par_chunks_exact(bb)
            .zip(qs.par_chunks_exact_mut(v))
            .map(|(blk, qs)| {
                if kind.is_k() {
                    return kquant::repack(kind, blk, qs);
                }
                qs.copy_from_slice(&blk[bb - v..]);
                half_at(blk, 0)
            })
            .collect();
        // Q4_1's minimum and Q4_K/Q5_K's `dmin` follow the scale.
        let m = match kind {
            QKind::Q4_1 | QKind::Q4K | QKind::Q5K => data
                .par_chunks_exact(bb)
                .map(|blk| half_at(blk, 2))
                .collect(),
            _ => Vec::new(),
        };
        Some(Self {
            kind,
            rows,
            cols,
            d,
            m,
            qs,
            tiled: false,
        })
    }

    /// The tiled layout (`tiles`): each tile's sixteen rows repacked as the row layout's
    /// super-blocks, then interleaved; one row tile per task.
    fn tiled_from(kind: QKind, rows: usize, cols: usize, data: &[u8]) -> Self {
        let (bb, pb, tb) = (
            kind.block_bytes(),
            kquant::packed_bytes(kind),
            tiles::tile_bytes(kind),
        );
        let (ns, tile) = (cols / kquant::SUPER, tiles::TILE);
        let mut qs = Values::zeroed(rows / tile * ns * tb);
        let heads: Vec<(Vec<f16>, Vec<f16>)> = qs
            .par_chunks_exact_mut(ns * tb)
            .enumerate()
            .map(|(t, out)| {
                let (mut d, mut m) = (Vec::with_capacity(ns * tile), Vec::new());
                let mut sbs = vec![0u8; tile * pb];
                for (i, out) in out.chunks_exact_mut(tb).enumerate() {
                    for (r, sb) in sbs.chunks_exact_mut(pb).enumerate() {
                        let blk = &data[((t * tile + r) * ns + i) * bb..][..bb];
                        d.push(kquant::repack(kind, blk, sb));
                        if kind != QKind::Q6K {
                            m.push(half_at(blk, 2));
                        }
                    }
                    let rows = std::array::from_fn(|r| &sbs[r * pb..(r + 1) * pb]);
                    tiles::tile(kind, &rows, out);
                }
                (d, m)
            })
            .collect();
        let d = heads.iter().flat_map(|(d, _)| d.iter().copied()).collect();
        let m = heads.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        Self {
            kind,
            rows,
            cols,
            d,
            m,
            qs,
            tiled: true,
        }
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

    /// Whether the rows are interleaved in tiles (`tiles`' layout) for the SIMD kernels.
    pub fn is_tiled(&self) -> bool {
        self.tiled
    }

    /// The rows a parallel task's share must be a multiple of: a tile's, or one.
    pub(super) fn row_align(&self) -> usize {
        if self.tiled {
            tiles::TILE
        } else {
            1
        }
    }

    /// Row `r`: its scales, minimums (empty unless Q4_1, Q4_K or Q5_K) and packed values.
    /// Panics if the rows are tiled ([`Packed::with_row`] takes either layout).
    pub(super) fn row(&self, r: usize) -> (&[f16], &[f16], &[u8]) {
        self.row_range(r, 1)
    }

    /// `f` of row `r` as [`Packed::row`] gives it, in either layout (a tiled row gathered
    /// from its tiles first).
    pub(super) fn with_row<T>(&self, r: usize, f: impl FnOnce(&[f16], &[f16], &[u8]) -> T) -> T {
        if self.tiled {
            let ns = self.cols / kquant::SUPER;
            let (d, m, qs) = tiles::row(self.kind, ns, (&self.d, &self.m, &self.qs[..]), r);
            return f(&d, &m, &qs);
        }
        let (d, m, qs) = self.row(r);
        f(d, m, qs)
    }

    /// Row tiles `t0..t0 + n` of a tiled matrix: their `d`, `dmin` (empty for Q6_K) and
    /// values, tile after tile (`tiles`' layout).
    pub(super) fn tiles(&self, t0: usize, n: usize) -> (&[f16], &[f16], &[u8]) {
        assert!(self.tiled, "the rows are not tiled");
        let ns = self.cols / kquant::SUPER;
        let (from, to) = (t0 * ns, (t0 + n) * ns);
        let tb = tiles::tile_bytes(self.kind);
        let (tile, m) = (tiles::TILE, &self.m);
        let m = if m.is_empty() {
            &m[..]
        } else {
            &m[from * tile..to * tile]
        };
        (
            &self.d[from * tile..to * tile],
            m,
            &self.qs[from * tb..to * tb],
        )
    }

    /// Rows `r0..r0 + n`, one after the other: as [`Packed::row`] gives one. Panics if the
    /// rows are tiled.
    pub(super) fn row_range(&self, r0: usize, n: usize) -> (&[f16], &[f16], &[u8]) {
        assert!(!self.tiled, "a tiled matrix has no row ranges");
        let nb = self.cols / self.kind.block_values();
        let v = p_values(self.kind);
        let (from, to) = (r0 * nb, (r0 + n) * nb);
        let m = if self.m.is_empty() {
            &self.m[..]
        } else {
            &self.m[from..to]
        };
        (&self.d[from..to], m, &self.qs[from * v..to * v])
    }

    /// Row `r` as f32 values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.kind.is_k() {
            return self.with_row(r, |d, m, qs| kquant::dequantize(self.kind, d, m, qs, out));
        }
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
                QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("handled above"),
            }
        }
    }
}

/// Bytes of packed values per block (per super-block for the K-quants).
pub(super) fn p_values(kind: QKind) -> usize {
    match kind {
        QKind::Q4_0 | QKind::Q4_1 => 16,
        QKind::Q8_0 => 32,
        QKind::Q4K | QKind::Q5K | QKind::Q6K => kquant::packed_bytes(kind),
    }
}

fn half_at(b: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Activations quantized to 8 bits per block of 32: scale, values, and scale × the values'
/// sum (which the minimum of Q4_1 and the offset of Q4_0 multiply), as llama.cpp's Q8_1; or,
/// for the K-quants, per super-block of 256 (one scale, the sums of each 16), as its Q8_K.
#[derive(Debug, Clone, Default)]
pub struct QActs {
    /// (blocks) scales.
    pub(super) d: Vec<f32>,
    /// (blocks) scale × the sum of the block's values.
    pub(super) ds: Vec<f32>,
    /// (blocks, 32) values.
    pub(super) q: Vec<i8>,
    /// (blocks, 2) sums of each 16 values: the K-quants' minimums and offsets, once per
    /// super-block.
    pub(super) s16: Vec<i16>,
    /// The K-quants' form (llama.cpp's Q8_K, [`QActs::quantize_k`]): one scale per 256
    /// values in `d`, `ds` empty.
    pub(super) k: bool,
}

impl QActs {
    /// Quantizes `x` for `kind`'s kernels: [`QActs::quantize_k`] for the K-quants,
    /// [`QActs::quantize`] for the others.
    pub fn quantize_for(&mut self, kind: QKind, x: &[f32]) {
        if kind.is_k() {
            self.quantize_k(x)
        } else {
            self.quantize(x)
        }
    }

    /// Whether these are in the K-quants' form ([`QActs::quantize_k`]).
    pub fn is_k(&self) -> bool {
        self.k
    }

    /// Quantizes `x` (length a multiple of 256) for the K-quants' kernels, in place of the
    /// previous contents, as llama.cpp's Q8_K: one f32 scale per 256 values, the values,
    /// and the sums of each 16.
    pub fn quantize_k(&mut self, x: &[f32]) {
        let sup = kquant::SUPER;
        let ns = x.len() / sup;
        self.k = true;
        self.d.resize(ns, 0.0);
        self.ds.clear();
        self.q.resize(ns * sup, 0);
        self.s16.resize(ns * sup / 16, 0);
        for (i, xs) in x.chunks_exact(sup).enumerate() {
            let d = abs_max(xs) / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let qs = self.q[i * sup..(i + 1) * sup].chunks_exact_mut(16);
            let sums = &mut self.s16[i * sup / 16..(i + 1) * sup / 16];
            for ((qs, xs), s) in qs.zip(xs.chunks_exact(16)).zip(sums) {
                // |sum| ≤ 16 · 127: an i16.
                *s = quantize16(xs, id, qs) as i16;
            }
            self.d[i] = d;
        }
    }

    /// Quantizes `x` (length a multiple of 32) in place of the previous contents, for the
    /// kernels of Q4_0, Q4_1 and Q8_0.
    pub fn quantize(&mut self, x: &[f32]) {
        let nb = x.len() / BLOCK;
        self.k = false;
        self.d.resize(nb, 0.0);
        self.ds.resize(nb, 0.0);
        self.q.resize(nb * BLOCK, 0);
        self.s16.resize(nb * 2, 0);
        for (b, xs) in x.chunks_exact(BLOCK).enumerate() {
            let d = abs_max(xs) / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut halves = [0i32; 2];
            let qs = self.q[b * BLOCK..(b + 1) * BLOCK].chunks_exact_mut(16);
            for ((qs, xs), h) in qs.zip(xs.chunks_exact(16)).zip(&mut halves) {
                *h = quantize16(xs, id, qs);
            }
            // |sum| ≤ 16 · 127: an i16.
            self.s16[2 * b] = halves[0] as i16;
            self.s16[2 * b + 1] = halves[1] as i16;
            let s = halves[0] + halves[1];
            // Scales rounded to f16 as llama.cpp's Q8_0/Q8_1 blocks (and candle's) store them.
            self.d[b] = f16::from_f32(d).to_f32();
            self.ds[b] = f16::from_f32(d * s as f32).to_f32();
        }
    }
}

/// Sixteen values `xs` times `id`, rounded (halves away from zero) and clamped to ±127, into
/// `qs`; returns their sum. Lane by lane, so the compiler vectorizes it: a prompt quantizes
/// every projection's input, token by token.
#[inline(always)]
fn quantize16(xs: &[f32], id: f32, qs: &mut [i8]) -> i32 {
    let mut q = [0i32; 16];
    for (q, &v) in q.iter_mut().zip(xs) {
        *q = small_int((v * id).round());
    }
    for (b, &v) in qs.iter_mut().zip(&q) {
        *b = v as i8;
    }
    q.iter().sum()
}

/// A whole `v` as an integer, clamped to ±127 (NaN: 0), as `v as i8` gives it, in bit
/// operations the compiler vectorizes (its saturating `as` it does one value at a time): a
/// whole number of magnitude below 2^22 plus 1.5 · 2^23 is exact, and its bits are then
/// those of 1.5 · 2^23 plus the number.
#[inline(always)]
fn small_int(v: f32) -> i32 {
    let v = if v.is_nan() {
        0.0
    } else {
        v.clamp(-127.0, 127.0)
    };
    (v + 12_582_912.0).to_bits() as i32 - 0x4B40_0000
}

/// The largest magnitude in `xs` (length a multiple of 16), in sixteen lanes so the compiler
/// vectorizes it; NaN is skipped as `f32::max` skips it.
fn abs_max(xs: &[f32]) -> f32 {
    let mut m = [0f32; 16];
    for c in xs.chunks_exact(16) {
        for (m, v) in m.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    m.iter().fold(0f32, |a, &b| a.max(b))
}

/// Row `r` of `w` · quantized activations, in plain Rust: the portable twin of the x86
/// kernels, and what they are tested against.
pub(super) fn dot_plain(w: &Packed, r: usize, a: &QActs) -> f32 {
    if w.kind.is_k() {
        return w.with_row(r, |d, m, qs| kquant::dot_plain(w.kind, d, m, qs, a));
    }
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
            QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("handled above"),
        };
        acc += dw * a.d[b] * isum as f32;
        acc += match w.kind {
            QKind::Q4_0 => -8.0 * dw * a.ds[b],
            QKind::Q4_1 => m[b].to_f32() * a.ds[b],
            _ => 0.0,
        };
    }
    acc
}

/// Rows per parallel task: a few tasks per thread, so a slow core does not hold the rest up.
fn chunk_rows(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads() * 4).max(16)
}

/// `out = W · x` for a quantized `W` (rows × cols) and `x` quantized into `a`, row `r` by
/// `dot(w, r, a)` (a kernel the facade picked for this CPU, or [`dot_plain`]).
pub(super) fn matvec_with(
    dot: impl Fn(&Packed, usize, &QActs) -> f32 + Sync,
    w: &Packed,
    a: &QActs,
    out: &mut [f32],
) {
    matvec_ranges(
        |r0, ys| {
            for (i, y) in ys.iter_mut().enumerate() {
                *y = dot(w, r0 + i, a);
            }
        },
        w,
        out,
    );
}

/// `out = W · x` by ranges of rows across the rayon pool: `rows(r0, ys)` fills rows
/// `r0..r0 + ys.len()` (a kernel that takes a range: one call, one bounds check).
pub(super) fn matvec_ranges(rows: impl Fn(usize, &mut [f32]) + Sync, w: &Packed, out: &mut [f32]) {
    debug_assert_eq!(out.len(), w.rows);
    let chunk = chunk_rows(w.rows).next_multiple_of(w.row_align());
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, ys)| rows(c * chunk, ys));
}

/// Row `r` of `w` (not a K-quant) · each of four activations: the plain twin of the x86
/// `dot4`.
pub(super) fn dot4_plain(w: &Packed, r: usize, a: [&QActs; 4]) -> [f32; 4] {
    a.map(|a| dot_plain(w, r, a))
}

/// Tokens per group of a K-quant prompt product: each super-block of a weight row is
/// unpacked once for this many tokens (eight: the most whose sums stay in registers).
pub(super) const KGROUP: usize = 8;

/// [`KGROUP`] tokens' activations in the K-quants' form, interleaved by super-block so the
/// kernels read a group from one base at fixed offsets: (super-blocks, [`KGROUP`], 256)
/// values, (super-blocks, [`KGROUP`]) scales, (super-blocks, [`KGROUP`], 16) sums of 16.
/// A single [`QActs`] is the same layout with a group of one.
#[derive(Debug, Clone, Default)]
pub(super) struct KGroup {
    pub(super) q: Vec<i8>,
    pub(super) d: Vec<f32>,
    pub(super) s16: Vec<i16>,
}

impl KGroup {
    /// `acts` (each in the K-quants' form, all of one length) interleaved.
    fn gather(acts: [&QActs; KGROUP]) -> Self {
        let ns = acts[0].d.len();
        let (sup, sums) = (kquant::SUPER, kquant::SUPER / 16);
        let mut g = Self {
            q: Vec::with_capacity(ns * KGROUP * sup),
            d: Vec::with_capacity(ns * KGROUP),
            s16: Vec::with_capacity(ns * KGROUP * sums),
        };
        for i in 0..ns {
            for a in acts {
                assert!(
                    a.k && a.d.len() == ns,
                    "a group needs activations of one K form"
                );
                g.q.extend_from_slice(&a.q[i * sup..(i + 1) * sup]);
                g.d.push(a.d[i]);
                g.s16.extend_from_slice(&a.s16[i * sums..(i + 1) * sums]);
            }
        }
        g
    }

    /// Super-blocks per token.
    pub(super) fn supers(&self) -> usize {
        self.d.len() / KGROUP
    }
}

/// Rows `r0..r0 + out.len()` of `w` (a K-quant) · each token of `g`, in plain Rust: the
/// portable twin of the x86 `tile`.
pub(super) fn tile_k_plain(w: &Packed, r0: usize, g: &KGroup, out: &mut [[f32; KGROUP]]) {
    let (sup, sums) = (kquant::SUPER, kquant::SUPER / 16);
    for (i, o) in out.iter_mut().enumerate() {
        w.with_row(r0 + i, |d, m, qs| {
            for (n, y) in o.iter_mut().enumerate() {
                *y = kquant::dot_plain_with(w.kind, d, m, qs, |s| {
                    let at = s * KGROUP + n;
                    (
                        &g.q[at * sup..(at + 1) * sup],
                        g.d[at],
                        &g.s16[at * sums..(at + 1) * sums],
                    )
                });
            }
        })
    }
}

/// Rows `r0..r0 + out.len()` of `w` · each of four activations, through `dot4`.
fn tile4(
    dot4: &(impl Fn(&Packed, usize, [&QActs; 4]) -> [f32; 4] + Sync),
    w: &Packed,
    r0: usize,
    g: &[&QActs; 4],
    out: &mut [[f32; 4]],
) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot4(w, r0 + i, *g);
    }
}

/// `out = X · Wᵀ` for a quantized `W` (rows × cols) and `T` rows of activations `acts`
/// (each `x_t` quantized): `out` (T, rows), row-major. The K-quants meet [`KGROUP`] tokens
/// at a time through `tile` (rows `r0..` of `W` · a [`KGroup`]: a kernel the facade picked
/// for this CPU, or [`tile_k_plain`]), the others four through `dot4` (or [`dot4_plain`]); a
/// last group of fewer tokens repeats its first.
pub(super) fn matmat_with(
    dot4: impl Fn(&Packed, usize, [&QActs; 4]) -> [f32; 4] + Sync,
    tile: impl Fn(&Packed, usize, &KGroup, &mut [[f32; KGROUP]]) + Sync,
    w: &Packed,
    acts: &[QActs],
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), w.rows * acts.len());
    if w.kind.is_k() {
        let groups: Vec<KGroup> = (0..acts.len().div_ceil(KGROUP))
            .into_par_iter()
            .map(|g| KGroup::gather(group(acts, g)))
            .collect();
        matmat_groups(
            |r0, g: &KGroup, o| tile(w, r0, g, o),
            &groups,
            w,
            acts.len(),
            out,
        );
    } else {
        let groups: Vec<[&QActs; 4]> = (0..acts.len().div_ceil(4))
            .map(|g| group(acts, g))
            .collect();
        matmat_groups(
            |r0, g, o| tile4(&dot4, w, r0, g, o),
            &groups,
            w,
            acts.len(),
            out,
        );
    }
}

/// Tokens `G·g..G·g + G` of `acts`; past the end, the group's first token again.
fn group<const G: usize>(acts: &[QActs], g: usize) -> [&QActs; G] {
    let len = (acts.len() - G * g).min(G);
    std::array::from_fn(|j| &acts[G * g + if j < len { j } else { 0 }])
}

/// Bytes of `W` per parallel task of [`matmat_groups`] at most: a task reads its rows once
/// for every group of tokens, so they should stay in the core's L2 cache (1-2 MiB on
/// current x86 cores) beside the groups' activations, yet span more than one tile (each
/// call of a tile kernel costs its checks and setup). 512-token prompts on the 1B shape
/// (Zen 5, 2 threads), medians of six alternating runs: tasks split only evenly (1.2 MB of
/// an 8,192 × 2,048 Q4_K) 334 tok/s; at most 64 KiB 330, 128 KiB 335 (a down projection's
/// task was then one tile), 192 KiB 350, 256 KiB 347.
const TASK_BYTES: usize = 256 << 10;

/// Rows per parallel task of [`matmat_groups`]: as many tasks as the threads can share
/// evenly, and each small enough for its rows of `W` to stay in the L2 cache
/// ([`TASK_BYTES`]); a whole number of `W`'s row groups (tiles).
fn chunk_rows_matmat(w: &Packed) -> usize {
    let align = w.row_align();
    let even = w.rows.div_ceil(rayon::current_num_threads() * 4).max(4);
    let row_bytes = (w.bytes() / w.rows.max(1)).max(1);
    // Whole row groups that fit, rounded down (one group where none fits).
    let fit = (TASK_BYTES / row_bytes / align * align).max(align);
    even.next_multiple_of(align).min(fit)
}

/// `out` (t, rows) from `tile(r0, group, rows' outputs)` over every group of `G` tokens:
/// the rows split across the rayon pool, each task sweeping its rows once per group (the
/// group's activations stay in the L1 cache for all of them) and writing its columns of
/// `out` directly.
fn matmat_groups<const G: usize, Grp: Sync>(
    tile: impl Fn(usize, &Grp, &mut [[f32; G]]) + Sync,
    groups: &[Grp],
    w: &Packed,
    t: usize,
    out: &mut [f32],
) {
    let rows = w.rows;
    if t == 0 || rows == 0 {
        return;
    }
    let chunk = chunk_rows_matmat(w);
    // Task c's columns c·chunk.. of every token's row of `out`.
    let mut columns: Vec<Vec<&mut [f32]>> = (0..rows.div_ceil(chunk))
        .map(|_| Vec::with_capacity(t))
        .collect();
    for token in out.chunks_exact_mut(rows) {
        for (dst, part) in columns.iter_mut().zip(token.chunks_mut(chunk)) {
            dst.push(part);
        }
    }
    columns
        .into_par_iter()
        .enumerate()
        .for_each(|(c, mut dst)| {
            let mut got = vec![[0f32; G]; dst[0].len()];
            for (g, grp) in groups.iter().enumerate() {
                tile(c * chunk, grp, &mut got);
                for (j, token) in dst[G * g..].iter_mut().take(G).enumerate() {
                    for (y, v) in token.iter_mut().zip(&got) {
                        *y = v[j];
                    }
                }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kernels::random_vec;
    use rand::{Rng, SeedableRng};

    fn random_blocks(kind: QKind, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        if kind.is_k() {
            return kquant::tests::random_blocks(kind, rows, cols, seed);
        }
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
                QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("made above"),
            }
        }
        data
    }

    const KINDS: [QKind; 6] = [
        QKind::Q4_0,
        QKind::Q4_1,
        QKind::Q8_0,
        QKind::Q4K,
        QKind::Q5K,
        QKind::Q6K,
    ];

    /// A width of `cols` (a multiple of 32) that `kind`'s blocks fit: rounded up to 256 for
    /// the K-quants.
    fn fit(kind: QKind, cols: usize) -> usize {
        cols.next_multiple_of(kind.block_values())
    }

    #[test]
    fn simd_and_plain_dot_products_agree() {
        // 18 blocks per row (two groups of 8 and a pair), 7 (an odd partial group), 48; the
        // K-quants: 3, 1 and 6 super-blocks.
        for (kind, cols) in KINDS.iter().flat_map(|&k| [(k, 576), (k, 224), (k, 1536)]) {
            let cols = fit(kind, cols);
            let rows = 67;
            let data = random_blocks(kind, rows, cols, 1);
            let w = Packed::from_ggml(kind, rows, cols, &data).unwrap();
            let mut a = QActs::default();
            a.quantize_for(kind, &random_vec(cols, 2));
            let mut plain = vec![0f32; rows];
            let mut fast = vec![0f32; rows];
            matvec_with(dot_plain, &w, &a, &mut plain);
            crate::kernels::matvec(&w, &a, &mut fast);
            for (p, f) in plain.iter().zip(&fast) {
                assert!(
                    (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                    "{kind:?} {cols}: {p} vs {f}"
                );
            }
        }
    }

    #[test]
    fn matrix_products_equal_row_products() {
        // 1, 4, 7, 8 and 19 activation rows: full groups of four and of eight, partial ones,
        // and both.
        for (kind, t) in KINDS
            .iter()
            .flat_map(|&k| [(k, 1), (k, 4), (k, 7), (k, 8), (k, 19)])
        {
            let (rows, cols) = (37, fit(kind, 576));
            let data = random_blocks(kind, rows, cols, 8);
            let w = Packed::from_ggml(kind, rows, cols, &data).unwrap();
            let acts: Vec<QActs> = (0..t)
                .map(|i| {
                    let mut a = QActs::default();
                    a.quantize_for(kind, &random_vec(cols, 10 + i as u64));
                    a
                })
                .collect();
            let mut plain = vec![0f32; t * rows];
            let mut fast = vec![0f32; t * rows];
            matmat_with(dot4_plain, tile_k_plain, &w, &acts, &mut plain);
            crate::kernels::matmat(&w, &acts, &mut fast);
            for (i, a) in acts.iter().enumerate() {
                let mut one = vec![0f32; rows];
                matvec_with(dot_plain, &w, a, &mut one);
                for r in 0..rows {
                    let (p, f) = (plain[i * rows + r], fast[i * rows + r]);
                    assert_eq!(p, one[r], "{kind:?} t={t} row {i},{r}");
                    assert!(
                        (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                        "{kind:?} t={t} row {i},{r}: {p} vs {f}"
                    );
                }
            }
        }
    }

    /// Where the CPU runs AVX-512 VNNI, its K-quant kernels give the AVX2 kernels' results
    /// bit for bit (their integer sums meet in the same lanes), one token and a group, both
    /// within rounding of the plain twins, and both prompt kernels of the other kinds agree
    /// with theirs; elsewhere there is nothing to compare.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_prompt_kernels_agree_with_the_avx2_and_plain_ones() {
        use crate::kernels::x86;
        let Some(cpu) = x86::Avx2::detect() else {
            return eprintln!("no AVX2: nothing to compare");
        };
        let Some(wide) = x86::Vnni::detect(cpu) else {
            return eprintln!("no AVX-512 VNNI: nothing to compare");
        };
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let (rows, cols) = (37, 1536);
            let w =
                Packed::from_ggml(kind, rows, cols, &random_blocks(kind, rows, cols, 3)).unwrap();
            let acts: Vec<QActs> = (0..KGROUP)
                .map(|i| {
                    let mut a = QActs::default();
                    a.quantize_for(kind, &random_vec(cols, 30 + i as u64));
                    a
                })
                .collect();
            let (mut avx2, mut avx512) = (vec![0f32; rows - 1], vec![0f32; rows - 1]);
            x86::dot_rows(cpu, &w, 1, &acts[0], &mut avx2);
            x86::dot_rows_vnni(wide, &w, 1, &acts[0], &mut avx512);
            assert_eq!(avx2, avx512, "{kind:?}, one token");
            let mut plain = vec![0f32; rows];
            matvec_with(dot_plain, &w, &acts[0], &mut plain);
            for (p, f) in plain[1..].iter().zip(&avx512) {
                assert!(
                    (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                    "{kind:?}: {p} vs {f}"
                );
            }
            let g = KGroup::gather(std::array::from_fn(|i| &acts[i]));
            let (mut avx2, mut avx512) = (vec![[0f32; KGROUP]; rows], vec![[0f32; KGROUP]; rows]);
            x86::tile(cpu, &w, 0, &g, &mut avx2);
            x86::tile_vnni(wide, &w, 0, &g, &mut avx512);
            assert_eq!(avx2, avx512, "{kind:?}, a group");
            let mut plain = vec![[0f32; KGROUP]; rows];
            tile_k_plain(&w, 0, &g, &mut plain);
            for (p, f) in plain.iter().flatten().zip(avx512.iter().flatten()) {
                assert!(
                    (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                    "{kind:?}: {p} vs {f}"
                );
            }
        }
        // The other kinds' four-token kernels, both, against their plain twin: 18 blocks (two
        // of eight and a tail of two), 7 (all tail), 48.
        for (kind, cols) in KINDS[..3]
            .iter()
            .flat_map(|&k| [(k, 576), (k, 224), (k, 1536)])
        {
            let rows = 9;
            let w =
                Packed::from_ggml(kind, rows, cols, &random_blocks(kind, rows, cols, 4)).unwrap();
            let acts: Vec<QActs> = (0..4)
                .map(|i| {
                    let mut a = QActs::default();
                    a.quantize_for(kind, &random_vec(cols, 40 + i as u64));
                    a
                })
                .collect();
            let four = std::array::from_fn(|i| &acts[i]);
            for r in 0..rows {
                let plain = dot4_plain(&w, r, four);
                for fast in [
                    x86::dot4(cpu, &w, r, four),
                    x86::dot4_vnni(wide, &w, r, four),
                ] {
                    for (p, f) in plain.iter().zip(fast) {
                        assert!(
                            (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                            "{kind:?} {cols}: {p} vs {f}"
                        );
                    }
                }
            }
        }
    }

    /// The K-quants in tiles (`tiles`) against the same blocks row after row: the same
    /// bytes held, the same rows dequantized, the plain products bit for bit, and the kernels
    /// this CPU picks for tiles (AVX-512 where it runs it) within rounding, for one token and
    /// for groups, on quantized values and on every bit pattern with activations at ±127.
    #[test]
    fn tiled_matrices_give_the_row_layouts_results() {
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let (rows, cols) = (48, 1536);
            // Every value and scale at its largest: with activations at ±127, the kernels'
            // i16 sums at their bounds.
            let mut top = kquant::tests::random_bytes(kind, rows, cols, 7);
            for blk in top.chunks_exact_mut(kind.block_bytes()) {
                match kind {
                    QKind::Q6K => {
                        blk[..192].fill(0xFF);
                        blk[192..208].fill(0x7F);
                    }
                    _ => blk[4..].fill(0xFF),
                }
            }
            for data in [
                random_blocks(kind, rows, cols, 5),
                kquant::tests::random_bytes(kind, rows, cols, 6),
                top,
            ] {
                let flat = Packed::from_ggml_as(kind, rows, cols, &data, false).unwrap();
                let tiled = Packed::from_ggml_as(kind, rows, cols, &data, true).unwrap();
                assert!(tiled.is_tiled() && !flat.is_tiled());
                assert_eq!(tiled.bytes(), flat.bytes());
                let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
                for r in 0..rows {
                    flat.dequantize_row(r, &mut a);
                    tiled.dequantize_row(r, &mut b);
                    assert_eq!(a, b, "{kind:?} row {r}");
                }
                for t in [1, 8, 19] {
                    let acts: Vec<QActs> = (0..t)
                        .map(|i| {
                            let mut x = random_vec(cols, 50 + i as u64);
                            for (j, v) in x.iter_mut().enumerate() {
                                // Tokens 0 and 1 all +1 and all −1 (every activation ±127),
                                // the others in runs of 16.
                                if i < 2 || (j / 16 + i).is_multiple_of(3) {
                                    *v = if i % 2 == 0 { 1.0 } else { -1.0 };
                                }
                            }
                            let mut a = QActs::default();
                            a.quantize_k(&x);
                            a
                        })
                        .collect();
                    let mut want = vec![0f32; t * rows];
                    matmat_with(dot4_plain, tile_k_plain, &flat, &acts, &mut want);
                    let mut plain = vec![0f32; t * rows];
                    matmat_with(dot4_plain, tile_k_plain, &tiled, &acts, &mut plain);
                    assert_eq!(want, plain, "{kind:?} t={t}: the plain twin on tiles");
                    let mut fast = vec![0f32; t * rows];
                    crate::kernels::matmat(&tiled, &acts, &mut fast);
                    let mut one = vec![0f32; rows];
                    for (i, a) in acts.iter().enumerate() {
                        crate::kernels::matvec(&tiled, a, &mut one);
                        for r in 0..rows {
                            let p = want[i * rows + r];
                            for f in [fast[i * rows + r], one[r]] {
                                assert!(
                                    (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                                    "{kind:?} t={t} row {i},{r}: {p} vs {f}"
                                );
                            }
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    tiled_kernels_match(&tiled, &acts, &want);
                }
            }
        }
    }

    /// A prompt's tasks hold at most [`TASK_BYTES`] of a big matrix each (a tile where one
    /// tile is more), whole tiles, and give each token's rows as one token at a time does.
    #[test]
    fn prompt_tasks_fit_the_l2_cache_and_give_the_rows_results() {
        for (rows, cols) in [(1024, 8192), (64, 1536), (32, 16384)] {
            let data = random_blocks(QKind::Q4K, rows, cols, 9);
            let w = Packed::from_ggml_as(QKind::Q4K, rows, cols, &data, true).unwrap();
            let (chunk, row_bytes) = (chunk_rows_matmat(&w), w.bytes() / rows);
            assert!(chunk.is_multiple_of(tiles::TILE), "{rows}x{cols}: {chunk}");
            assert!(
                chunk * row_bytes <= TASK_BYTES.max(tiles::TILE * row_bytes),
                "{rows}x{cols}: {chunk} rows of {row_bytes} bytes"
            );
            let acts: Vec<QActs> = (0..11)
                .map(|i| {
                    let mut a = QActs::default();
                    a.quantize_k(&random_vec(cols, 70 + i));
                    a
                })
                .collect();
            let mut all = vec![0f32; acts.len() * rows];
            crate::kernels::matmat(&w, &acts, &mut all);
            let mut one = vec![0f32; rows];
            for (i, a) in acts.iter().enumerate() {
                crate::kernels::matvec(&w, a, &mut one);
                for (r, (&m, &v)) in all[i * rows..].iter().zip(&one).enumerate() {
                    assert!(
                        (m - v).abs() <= 1e-4 * v.abs().max(1.0),
                        "token {i} row {r}"
                    );
                }
            }
        }
    }

    /// Every x86 kernel on tiles this CPU runs, called directly (the facade picks one):
    /// AVX2, and AVX-512 where it runs it, for the first token and for a group of the first
    /// [`KGROUP`] (repeating the first past the end), against `want` (tokens × rows).
    #[cfg(target_arch = "x86_64")]
    fn tiled_kernels_match(w: &Packed, acts: &[QActs], want: &[f32]) {
        use crate::kernels::x86;
        let Some(cpu) = x86::Avx2::detect() else {
            return;
        };
        let (rows, kind) = (w.rows(), w.kind());
        let close = |p: f32, f: f32, what: &str| {
            assert!(
                (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                "{kind:?} {what}: {p} vs {f}"
            )
        };
        let g = KGroup::gather(std::array::from_fn(|i| {
            &acts[if i < acts.len() { i } else { 0 }]
        }));
        let wide = x86::Vnni::detect(cpu);
        let mut one = vec![0f32; rows - 16];
        let mut grp = vec![[0f32; KGROUP]; rows];
        for vnni in [false, true] {
            match (vnni, wide) {
                (false, _) => {
                    x86::tiled_rows(cpu, w, 16, &acts[0], &mut one);
                    x86::tiled_group(cpu, w, 0, &g, &mut grp);
                }
                (true, Some(wide)) => {
                    x86::tiled_rows_vnni(wide, w, 16, &acts[0], &mut one);
                    x86::tiled_group_vnni(wide, w, 0, &g, &mut grp);
                }
                (true, None) => continue,
            }
            for (r, f) in one.iter().enumerate() {
                close(want[16 + r], *f, &format!("one token, row {}", 16 + r));
            }
            for (r, o) in grp.iter().enumerate() {
                for (n, f) in o.iter().enumerate() {
                    let n = if n < acts.len() { n } else { 0 };
                    close(
                        want[n * rows + r],
                        *f,
                        &format!("group, row {r}, token {n}"),
                    );
                }
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
            a.quantize_for(kind, &x);
            let mut got = vec![0f32; rows];
            crate::kernels::matvec(&w, &a, &mut got);
            let mut plain = vec![0f32; rows];
            matvec_with(dot_plain, &w, &a, &mut plain);
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
                for got in [got[r], plain[r]] {
                    let err = (got - want[r]).abs();
                    assert!(err < 0.01 * scale, "{kind:?} row {r}: {got} vs {}", want[r]);
                }
            }
        }
    }

    /// Both activation forms equal the scalar formula of llama.cpp's reference quantizers
    /// (candle's too): `round(x / d)`, halves away from zero, `d` the block's largest
    /// magnitude over 127; an all-zero block is all zeros with scale 0.
    #[test]
    fn activation_quantization_is_the_scalar_formula() {
        let sup = kquant::SUPER;
        let mut x = random_vec(3 * sup, 11);
        // Block 0's values on halves of its step (max 127: step 1), block 1 zeros.
        x[0] = 127.0;
        for (i, v) in x[1..BLOCK].iter_mut().enumerate() {
            *v = (i as f32 - 15.0) + 0.5;
        }
        x[BLOCK..2 * BLOCK].fill(0.0);
        for k in [false, true] {
            let n = if k { sup } else { BLOCK };
            let mut a = QActs::default();
            if k {
                a.quantize_k(&x);
            } else {
                a.quantize(&x);
            }
            for (b, xs) in x.chunks_exact(n).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let q: Vec<i8> = xs
                    .iter()
                    .map(|&v| {
                        if d > 0.0 {
                            (v * (1.0 / d)).round() as i8
                        } else {
                            0
                        }
                    })
                    .collect();
                assert_eq!(&a.q[b * n..(b + 1) * n], &q[..], "k {k} block {b}");
                let sums: Vec<i16> = q
                    .chunks_exact(16)
                    .map(|c| c.iter().map(|&v| i16::from(v)).sum())
                    .collect();
                assert_eq!(&a.s16[b * n / 16..(b + 1) * n / 16], &sums[..]);
                if k {
                    assert_eq!(a.d[b], d);
                }
            }
            if !k {
                // Halves went away from zero: 0.5 -> 1, -0.5 -> -1, 2.5 -> 3.
                assert_eq!((a.q[16], a.q[15], a.q[18]), (1, -1, 3));
                assert_eq!(a.d[1], 0.0);
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
            let half = |h: usize| -> i32 {
                let at = b * BLOCK + 16 * h;
                a.q[at..at + 16].iter().map(|&q| q as i32).sum()
            };
            assert_eq!(
                (a.s16[2 * b] as i32, a.s16[2 * b + 1] as i32),
                (half(0), half(1))
            );
            assert!((a.ds[b] - ds).abs() <= 2e-3 * ds.abs() + 1e-6);
            assert!((back - v).abs() <= 0.51 * a.d[b] + 1e-6);
        }
        let zeros = vec![0f32; 32];
        a.quantize(&zeros);
        assert_eq!(a.d, vec![0.0]);
        assert!(a.q.iter().all(|&q| q == 0));
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
