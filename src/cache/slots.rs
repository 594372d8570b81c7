//! Slot storage: per layer, a preallocated buffer of slots per KV head holding keys, values
//! and per-slot records (position, accumulated attention, latest score, rank), written and
//! moved in place; and the in-place host ops that do it ([`SlotCopy`], [`SlotWrite`]).
//!
//! Keys and values are stored as the cache's [`KvType`]: f32 or f16 tensors (H_kv, cap, d),
//! or for Q8_0 a u8 tensor (H_kv, cap, d / 32 · 34) of blocks, host memory only. Every
//! write converts (or quantizes) the new rows; the tensor backend reads them back as f32.
//!
//! A layer's used slots are always `0..len` for every KV head, but each head may hold a
//! different token in a given slot. Eviction ([`super::evict`]) decides which slots go; this
//! module reallocates, appends, and moves survivors into the holes.

use candle_core::{Device, Storage, Tensor};

use super::profile::{remap, Profile};
use super::KvCache;
use super::{KvType, ProfileType, Shape};
use crate::error::{Error, Result};
use crate::kernels::{self, KvRows};

/// Slots allocated up front when the cache can grow without bound.
pub(super) const INITIAL_SLOTS: usize = 256;

/// One layer's slots and the attention statistics its policy scores from.
#[derive(Debug)]
pub struct LayerCache {
    /// (H_kv, capacity, row): a row holds `d` values as `kv` (row = d for f32 and f16).
    pub(super) k: Tensor,
    /// (H_kv, capacity, row)
    pub(super) v: Tensor,
    /// How rows are stored.
    pub(super) kv: KvType,
    /// Values per row (the head size).
    pub(super) d: usize,
    /// Used slots per KV head (the same for every head).
    pub(super) len: usize,
    pub(super) cap: usize,
    pub(super) n_kv: usize,
    pub(super) group: usize,
    /// Token position of each slot: `[head * cap + slot]`.
    pub(super) pos: Vec<u32>,
    /// Attention received since the token entered: `[head * cap + slot]` (if needed).
    pub(super) acc: Vec<f32>,
    /// Latest score of each slot (NaN: not scored yet): `[head * cap + slot]`.
    pub(super) score: Vec<f32>,
    /// Rank of each slot's token among its head's retained tokens, in conversation order
    /// (the re-based RoPE position): `[head * cap + slot]`. Kept up to date only when
    /// positions are re-based.
    pub(super) rank: Vec<u32>,
    /// The recent queries' attention rows over these slots (MorphKV's profile).
    pub(super) profile: Profile,
    /// Tensor ops only, as on a GPU, even on the CPU (see [`super::KvCache::set_portable`]).
    pub(super) portable: bool,
    /// Scratch for eviction rounds: whether each slot is a candidate.
    pub(super) candidate: Vec<bool>,
}

impl LayerCache {
    pub(super) fn new(
        cfg: &Shape,
        cap: usize,
        (ring_cap, ring_type): (usize, ProfileType),
        kv: KvType,
        dev: &Device,
    ) -> Result<Self> {
        let (n_kv, d) = (cfg.n_kv_head, cfg.head_dim);
        let row = kv.row_len(d);
        Ok(Self {
            k: Tensor::zeros((n_kv, cap, row), kv.dtype(), dev)?,
            v: Tensor::zeros((n_kv, cap, row), kv.dtype(), dev)?,
            kv,
            d,
            len: 0,
            cap,
            n_kv,
            group: cfg.group(),
            pos: vec![0; n_kv * cap],
            acc: vec![0.0; n_kv * cap],
            score: vec![f32::NAN; n_kv * cap],
            rank: vec![0; n_kv * cap],
            profile: Profile::new(cfg.n_head, cfg.group(), ring_cap, cap, ring_type),
            portable: false,
            candidate: Vec::new(),
        })
    }

    /// Used slots per KV head.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is used.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Position of the token in `slot` of KV head `head`.
    pub fn position(&self, head: usize, slot: usize) -> u32 {
        self.pos[head * self.cap + slot]
    }

    /// Positions held by KV head `head`, in slot order.
    pub fn positions(&self, head: usize) -> &[u32] {
        &self.pos[head * self.cap..head * self.cap + self.len]
    }

    /// Latest scores of the tokens KV head `head` holds, in slot order (NaN: not scored yet,
    /// e.g. in the window).
    pub fn scores(&self, head: usize) -> &[f32] {
        &self.score[head * self.cap..head * self.cap + self.len]
    }

    /// Keys and values of the used slots, (H_kv, len, d) each, in f32: views of the storage
    /// for f32, copies decoded from f16 or Q8_0 otherwise (on the CPU by the kernels,
    /// elsewhere or when portable by candle, f16 only).
    pub fn kv(&self) -> Result<(Tensor, Tensor)> {
        let (k, v) = (
            self.k.narrow(1, 0, self.len)?,
            self.v.narrow(1, 0, self.len)?,
        );
        let host = self.k.device().is_cpu() && !self.portable;
        if self.kv == KvType::F32 {
            return Ok((k, v));
        }
        if self.kv == KvType::F16 && !host {
            let float = candle_core::DType::F32;
            return Ok((k.to_dtype(float)?, v.to_dtype(float)?));
        }
        let (n_kv, len, d, cap) = (self.n_kv, self.len, self.d, self.cap);
        // (H_kv, cap, row) as stored → (H_kv, len, d) f32
        let decode = |rows: KvRows| {
            let mut out = vec![0f32; n_kv * len * d];
            for (h, dst) in out.chunks_exact_mut((len * d).max(1)).enumerate() {
                kernels::decode_kv(rows.rows(h * cap, len, d), dst);
            }
            out
        };
        let (ko, vo) = self.with_kv_host(|k, v| (decode(k), decode(v)))?;
        let dev = self.k.device();
        Ok((
            Tensor::from_vec(ko, (n_kv, len, d), dev)?,
            Tensor::from_vec(vo, (n_kv, len, d), dev)?,
        ))
    }

    /// Runs `f` on the host rows of the keys and values as stored, (H_kv, capacity, d) each,
    /// of which the first [`LayerCache::len`] slots per head are used. Errors unless they are
    /// in host memory.
    pub fn with_kv_host<R>(&self, f: impl FnOnce(KvRows, KvRows) -> R) -> Result<R> {
        let (ks, kl) = self.k.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        let (Storage::Cpu(k), Storage::Cpu(v)) = (&*ks, &*vs) else {
            return Err(Error::arg(
                "cache",
                "keys and values are not in host memory",
            ));
        };
        let n = self.k.elem_count();
        let (k0, v0) = (kl.start_offset(), vl.start_offset());
        Ok(match self.kv {
            KvType::F32 => {
                let (k, v) = (k.as_slice::<f32>()?, v.as_slice::<f32>()?);
                f(KvRows::F32(&k[k0..k0 + n]), KvRows::F32(&v[v0..v0 + n]))
            }
            KvType::F16 => {
                let (k, v) = (k.as_slice::<half::f16>()?, v.as_slice::<half::f16>()?);
                f(KvRows::F16(&k[k0..k0 + n]), KvRows::F16(&v[v0..v0 + n]))
            }
            KvType::Q8_0 => {
                let (k, v) = (k.as_slice::<u8>()?, v.as_slice::<u8>()?);
                f(KvRows::Q8_0(&k[k0..k0 + n]), KvRows::Q8_0(&v[v0..v0 + n]))
            }
        })
    }

    /// New rows (H_kv, T, d), as any float tensor, in this cache's storage: (H_kv, T, row).
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        if self.kv != KvType::Q8_0 {
            return Ok(x.to_dtype(self.kv.dtype())?.contiguous()?);
        }
        let (n_kv, t, d) = x.dims3()?;
        let values = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let row = self.kv.row_len(d);
        let mut bytes = vec![0u8; n_kv * t * row];
        kernels::quantize_q8_0(&values, &mut bytes);
        Ok(Tensor::from_vec(bytes, (n_kv, t, row), x.device())?)
    }

    /// Slots per KV head.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Largest |maintained − recomputed| old mass over the profile's valid rows (exact
    /// arithmetic makes it 0; tests check the bookkeeping with it).
    #[doc(hidden)]
    pub fn old_mass_error(&self, sinks: u32) -> f64 {
        self.profile.old_mass_error(&self.pos, self.len, sinks)
    }

    /// A deep copy (tensors are shared by reference when cloned; these are written in place).
    pub(super) fn fork(&self) -> Result<Self> {
        Ok(Self {
            k: self.k.copy()?,
            v: self.v.copy()?,
            kv: self.kv,
            d: self.d,
            len: self.len,
            cap: self.cap,
            n_kv: self.n_kv,
            group: self.group,
            pos: self.pos.clone(),
            acc: self.acc.clone(),
            score: self.score.clone(),
            rank: self.rank.clone(),
            profile: self.profile.clone(),
            portable: self.portable,
            candidate: Vec::new(),
        })
    }

    /// Reallocates to `cap` slots (more or fewer, at least the used ones), keeping the used
    /// ones and their statistics.
    pub(super) fn grow(&mut self, cap: usize) -> Result<()> {
        let (n_kv, _, d) = self.k.dims3()?;
        let k = Tensor::zeros((n_kv, cap, d), self.k.dtype(), self.k.device())?;
        let v = Tensor::zeros((n_kv, cap, d), self.v.dtype(), self.v.device())?;
        if self.len > 0 {
            k.slice_set(&self.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            v.slice_set(&self.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
        }
        let (old, len) = (self.cap, self.len);
        let pos = remap(&self.pos, n_kv, 0, old, cap, len);
        self.rank = remap(&self.rank, n_kv, 0, old, cap, len);
        self.acc = remap(&self.acc, n_kv, 0.0, old, cap, len);
        self.score = remap(&self.score, n_kv, f32::NAN, old, cap, len);
        self.profile.grow(cap, len);
        (self.k, self.v, self.pos, self.cap) = (k, v, pos, cap);
        Ok(())
    }

    /// Opens slots `past..past + positions.len()` of every head for new tokens at
    /// `positions`: fresh records, ranks following the used slots.
    pub(super) fn open(&mut self, past: usize, positions: &[u32]) {
        let cap = self.cap;
        for h in 0..self.n_kv {
            for (i, &p) in positions.iter().enumerate() {
                let at = h * cap + past + i;
                self.pos[at] = p;
                self.acc[at] = 0.0;
                self.score[at] = f32::NAN;
                self.rank[at] = (past + i) as u32;
            }
        }
    }

    /// Adds attention probabilities (H_q, rows, visible) to the slots' received attention,
    /// summed over rows and over the query heads of each KV head (H2O's statistic). With a
    /// half-life (in rows, 0: none) the sum fades: each row counts `0.5^(1 / half_life)`
    /// times as much as the next, so after `half_life` more rows it counts half.
    pub(super) fn accumulate(
        &mut self,
        probs: &[f32],
        (n_head, rows, visible): (usize, usize, usize),
        half_life: usize,
    ) {
        let (group, cap) = (self.group, self.cap);
        // The weight of row r is fade^(rows - 1 - r); what came before fades by fade^rows.
        let fade = if half_life == 0 {
            1.0
        } else {
            0.5f64.powf(1.0 / half_life as f64)
        };
        if fade < 1.0 {
            let before = fade.powi(rows as i32) as f32;
            for h in 0..self.n_kv {
                for acc in &mut self.acc[h * cap..h * cap + visible] {
                    *acc *= before;
                }
            }
        }
        for qh in 0..n_head {
            let h = qh / group;
            for r in 0..rows {
                let w = fade.powi((rows - 1 - r) as i32) as f32;
                let row = &probs[(qh * rows + r) * visible..(qh * rows + r + 1) * visible];
                for (acc, p) in self.acc[h * cap..h * cap + visible].iter_mut().zip(row) {
                    *acc += w * p;
                }
            }
        }
    }

    /// Re-based RoPE positions of the used slots, (H_kv, len) as u32.
    pub(super) fn ranks(&self, device: &Device) -> Result<Tensor> {
        let mut ranks = Vec::with_capacity(self.n_kv * self.len);
        for h in 0..self.n_kv {
            ranks.extend_from_slice(&self.rank[h * self.cap..h * self.cap + self.len]);
        }
        Ok(Tensor::from_vec(ranks, (self.n_kv, self.len), device)?)
    }

    /// Writes new keys and values, (H_kv, T, d) each, into slots `len..len + T` of every head
    /// (in place, converted to the storage) and returns all used slots as [`LayerCache::kv`]
    /// does, (H_kv, len + T, d) each.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dims()[1];
        if self.len + t > self.cap {
            return Err(Error::arg(
                "cache",
                format!(
                    "{} slots used + {t} new > capacity {}: call KvCache::begin first",
                    self.len, self.cap
                ),
            ));
        }
        self.k.slice_set(&self.encode(k)?, 1, self.len)?;
        self.v.slice_set(&self.encode(v)?, 1, self.len)?;
        self.len += t;
        self.kv()
    }

    /// Writes one token's keys and values, (H_kv, d) host values each, into slot `len` of
    /// every head (in place, host memory only): [`LayerCache::append`] without tensors.
    pub fn append_host(&mut self, k: &[f32], v: &[f32]) -> Result<()> {
        if self.len + 1 > self.cap {
            return Err(Error::arg(
                "cache",
                format!("{} slots used + 1 new > capacity {}", self.len, self.cap),
            ));
        }
        let (cap, slot) = (self.cap, self.len);
        self.k.inplace_op1(&SlotWrite { rows: k, cap, slot })?;
        self.v.inplace_op1(&SlotWrite { rows: v, cap, slot })?;
        self.len += 1;
        Ok(())
    }

    /// Moves slot `src` to `dst` for each pair of each KV head: device rows and host stats.
    pub(super) fn move_slots(&mut self, moves: &[Vec<(usize, usize)>]) -> Result<()> {
        let m = moves.iter().map(Vec::len).max().unwrap_or(0);
        if m == 0 {
            return Ok(());
        }
        let d = self.k.dims()[2];
        if self.k.device().is_cpu() && !self.portable {
            let op = SlotCopy {
                moves,
                cap: self.cap,
                d,
            };
            self.k.inplace_op1(&op)?;
            self.v.inplace_op1(&op)?;
            self.move_bookkeeping(moves);
            return Ok(());
        }
        let (mut src, mut dst) = (Vec::with_capacity(self.n_kv * m * d), Vec::new());
        dst.reserve(self.n_kv * m * d);
        for mv in moves {
            // Heads with fewer moves repeat one of theirs (or copy slot 0 onto itself).
            let pad = mv.first().copied().unwrap_or((0, 0));
            for i in 0..m {
                let (s, t) = mv.get(i).copied().unwrap_or(pad);
                src.extend(std::iter::repeat_n(s as u32, d));
                dst.extend(std::iter::repeat_n(t as u32, d));
            }
        }
        let dev = self.k.device().clone();
        let src = Tensor::from_vec(src, (self.n_kv, m, d), &dev)?;
        let dst = Tensor::from_vec(dst, (self.n_kv, m, d), &dev)?;
        for buf in [&self.k, &self.v] {
            // Gather every source before writing: sources and destinations are disjoint.
            let rows = buf.gather(&src, 1)?;
            buf.scatter_set(&dst, &rows, 1)?;
        }
        self.move_bookkeeping(moves);
        Ok(())
    }

    /// The per-slot records' side of [`LayerCache::move_slots`].
    fn move_bookkeeping(&mut self, moves: &[Vec<(usize, usize)>]) {
        let cap = self.cap;
        for (h, mv) in moves.iter().enumerate() {
            for &(s, t) in mv {
                self.pos[h * cap + t] = self.pos[h * cap + s];
                self.acc[h * cap + t] = self.acc[h * cap + s];
                self.score[h * cap + t] = self.score[h * cap + s];
                self.rank[h * cap + t] = self.rank[h * cap + s];
            }
        }
    }
}

impl KvCache {
    /// An independent copy of this cache: the same conversation, to continue two ways (e.g.
    /// score an answer, then decode one, from the same prompt).
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(LayerCache::fork)
                .collect::<Result<_>>()?,
            cfg: self.cfg.clone(),
            policy: self.cfg.build_policy(),
            evicted: self.evicted.clone(),
            attention: self.attention.clone(),
            ..*self
        })
    }

    /// Tensor ops only, even on the CPU: the decoder and the cache take the path a GPU takes
    /// (no host kernels, no in-place slot ops), so tests can check that path against the host
    /// one on machines without a GPU. Off by default.
    pub fn set_portable(&mut self, on: bool) {
        for l in &mut self.layers {
            l.portable = on;
        }
    }

    /// Whether [`KvCache::set_portable`] is on.
    pub fn portable(&self) -> bool {
        self.layers.first().is_some_and(|l| l.portable)
    }
}

/// Copies whole slots within a (H_kv, cap, d) buffer in host memory: `moves[h]` holds the
/// (source, destination) slot pairs of head `h`, sources and destinations disjoint.
struct SlotCopy<'a> {
    moves: &'a [Vec<(usize, usize)>],
    cap: usize,
    d: usize,
}

impl SlotCopy<'_> {
    fn apply<T: Copy>(&self, buf: &mut [T]) {
        for (h, mv) in self.moves.iter().enumerate() {
            let base = h * self.cap * self.d;
            for &(s, t) in mv {
                let from = base + s * self.d;
                buf.copy_within(from..from + self.d, base + t * self.d);
            }
        }
    }
}

impl candle_core::InplaceOp1 for SlotCopy<'_> {
    fn name(&self) -> &'static str {
        "slot-copy"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage as S;
        let o = layout.start_offset();
        match storage {
            S::F32(b) => self.apply(&mut b[o..]),
            S::F16(b) => self.apply(&mut b[o..]),
            S::BF16(b) => self.apply(&mut b[o..]),
            S::U8(b) => self.apply(&mut b[o..]),
            _ => candle_core::bail!("slot-copy: keys and values must be f32, f16, bf16 or u8"),
        }
        Ok(())
    }
}

/// Writes one token's rows, (H_kv, d) f32, into slot `slot` of each head of a (H_kv, cap,
/// row) buffer in host memory: f32 as is, f16 rounded, u8 as Q8_0 blocks.
struct SlotWrite<'a> {
    rows: &'a [f32],
    cap: usize,
    slot: usize,
}

impl candle_core::InplaceOp1 for SlotWrite<'_> {
    fn name(&self) -> &'static str {
        "slot-write"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage as S;
        let (n_kv, cap, row) = layout.shape().dims3()?;
        let d = self.rows.len() / n_kv.max(1);
        let want = match storage {
            S::F32(_) | S::F16(_) => d,
            S::U8(_) => KvType::Q8_0.row_len(d),
            _ => candle_core::bail!("slot-write: keys and values must be f32, f16 or q8_0"),
        };
        if cap != self.cap || self.rows.len() != n_kv * d || row != want {
            candle_core::bail!(
                "slot-write: {} values for {n_kv} heads of rows of {row}",
                self.rows.len()
            );
        }
        let o = layout.start_offset();
        for (h, x) in self.rows.chunks_exact(d).enumerate() {
            let at = o + (h * cap + self.slot) * row;
            match storage {
                S::F32(b) => b[at..at + row].copy_from_slice(x),
                S::F16(b) => {
                    for (y, v) in b[at..at + row].iter_mut().zip(x) {
                        *y = half::f16::from_f32(*v);
                    }
                }
                S::U8(b) => kernels::quantize_q8_0(x, &mut b[at..at + row]),
                _ => {}
            }
        }
        Ok(())
    }
}
