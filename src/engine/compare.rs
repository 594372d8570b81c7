//! Compare mode: a second cache that follows the conversation of the first, fed the same
//! tokens (teacher-forced on what the first one generates), so the two differ only in what
//! they keep. After every step it says how far apart their next-token distributions are.
//!
//! ```text
//! prompt ids ──▶ main.prefill ──┬─▶ divergence(main.logits, other.logits) ─▶ next token's
//!            └─▶ other.prefill ─┘
//! main samples t ─▶ main.feed(t), other.feed(t) ─▶ divergence ─▶ …
//! ```
//!
//! It runs on the engine's thread, after the main cache's step: typing never waits for it,
//! and the answer slows by the second forward pass (its cost is measured and reported).

use std::time::Instant;

use super::telemetry::Telemetry;
use super::{CompareStep, Divergence, Watch};
use crate::cache::{CacheConfig, KvCache};
use crate::error::Result;
use crate::model::Model;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// The second cache and what is known of it.
pub(super) struct Compare<'m> {
    pub(super) session: Session<'m>,
    pub(super) tel: Telemetry,
    /// How the two next-token distributions differ now (None before anything was fed).
    pending: Option<Pending>,
    /// Seconds its forward passes took during the answer in progress.
    secs: f64,
    /// Its time over the main cache's in the answer so far (or the last answer).
    cost: f64,
}

/// The divergence of the distributions the next token is drawn from.
#[derive(Debug, Clone, Copy)]
struct Pending {
    kl: f32,
    main_top1: u32,
    other_top1: u32,
}

impl<'m> Compare<'m> {
    /// A second cache under `cfg`, fed `history` (everything the main cache was fed), with
    /// the main cache's logits to compare against.
    pub(super) fn new(
        model: &'m Model,
        cfg: CacheConfig,
        watch: Watch,
        history: &[u32],
        main_logits: &[f32],
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        cfg.validate()?;
        let c = model.config();
        let budget = cfg.budget;
        let mut session = Session::greedy(model, cfg)?;
        session.cache_mut().record_evictions(true);
        session.cache_mut().record_attention(false);
        let mut tel = Telemetry::new(c.n_layer, c.n_kv_head, budget);
        tel.watch = Watch {
            attention: false,
            ..watch
        };
        let mut me = Self {
            session,
            tel,
            pending: None,
            secs: 0.0,
            cost: 0.0,
        };
        if !history.is_empty() {
            me.read(history, main_logits, progress)?;
        }
        Ok(me)
    }

    /// Feeds prompt tokens, as the main cache was just fed them.
    pub(super) fn prefill(&mut self, ids: &[u32], main_logits: &[f32]) -> Result<()> {
        self.read(ids, main_logits, |_, _| {})
    }

    fn read(
        &mut self,
        ids: &[u32],
        main_logits: &[f32],
        progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        self.session.prefill_with(ids, progress)?;
        self.tel.log_evictions(self.session.cache_mut());
        self.pending = Some(divergence(main_logits, self.session.logits()));
        Ok(())
    }

    /// Feeds the token the main cache generated and fed.
    pub(super) fn feed(&mut self, token: u32, main_logits: &[f32]) -> Result<()> {
        let t0 = Instant::now();
        self.session.feed(token)?;
        self.tel.log_evictions(self.session.cache_mut());
        self.pending = Some(divergence(main_logits, self.session.logits()));
        self.secs += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// An answer starts: its cost is counted from zero.
    pub(super) fn start_answer(&mut self) {
        self.secs = 0.0;
    }

    /// The divergence of the distributions `token` (the `index`-th of the answer) was just
    /// drawn from.
    pub(super) fn divergence(
        &self,
        index: usize,
        token: u32,
        tok: &Tokenizer,
    ) -> Option<Divergence> {
        self.pending.map(|p| Divergence {
            index,
            token,
            kl: p.kl,
            main_top1: p.main_top1,
            other_top1: p.other_top1,
            main_text: tok.token_text(p.main_top1),
            other_text: tok.token_text(p.other_top1),
        })
    }

    /// Forgets the conversation: an empty cache under the same settings.
    pub(super) fn reset(&mut self) -> Result<()> {
        let cfg = self.session.cache().config().clone();
        let model = self.session.model();
        let mut cache = KvCache::from_config(model.config(), cfg, model.device())?;
        cache.record_evictions(true);
        cache.record_attention(false);
        self.session.set_cache(cache);
        let c = model.config();
        self.tel
            .clear(c.n_layer, c.n_kv_head, self.session.cache().config().budget);
        self.pending = None;
        Ok(())
    }

    /// The answer's decoding has taken `main_secs` so far, this cache's forward passes
    /// included: what this cache costs is measured from it.
    pub(super) fn timed(&mut self, main_secs: f64) {
        let own = main_secs - self.secs;
        if own > 0.0 {
            self.cost = self.secs / own;
        }
    }

    /// What the panels show of the second cache after a step (its cost as last measured).
    pub(super) fn step(&self) -> CompareStep {
        let c = self.session.cache();
        let kv_heads = self.session.model().config().n_kv_head;
        CompareStep {
            policy: c.config().policy.name().to_string(),
            cost: self.cost,
            step: self.tel.step_info(c, kv_heads, 0),
        }
    }
}

/// KL(P‖Q) of the softmaxes of two logit rows, in nats, and each row's top-1 token.
pub fn divergence_of(p: &[f32], q: &[f32]) -> (f32, u32, u32) {
    let d = divergence(p, q);
    (d.kl, d.main_top1, d.other_top1)
}

/// One pass over the two rows after their maxima: `e^(a-max)` by the kernels' branch-free
/// exponential in lanes of 8 (a loop the compiler turns into SIMD; about 0.1 ms for a 49K
/// vocabulary, where f64 `exp` took 1.5 ms, a sixth of a decode step), sums in f64 per block.
/// With `a' = a - max_a`, `b' = b - max_b`, `Z` their sums of exponentials:
/// `KL = Σ e^a' (a' - b') / Z_a - ln Z_a + ln Z_b`.
fn divergence(p: &[f32], q: &[f32]) -> Pending {
    use crate::kernels::exp_nonpositive as exp;
    const LANES: usize = 8;
    const BLOCK: usize = 512;
    let n = p.len().min(q.len());
    let (p, q) = (&p[..n], &q[..n]);
    let (main_top1, other_top1) = (argmax(p), argmax(q));
    let mp = p.get(main_top1 as usize).copied().unwrap_or(f32::NAN);
    let mq = q.get(other_top1 as usize).copied().unwrap_or(f32::NAN);
    if !(mp.is_finite() && mq.is_finite()) {
        return Pending {
            kl: f32::NAN,
            main_top1,
            other_top1,
        };
    }
    let (mut zp, mut zq, mut s) = (0.0f64, 0.0f64, 0.0f64);
    for (bp, bq) in p.chunks(BLOCK).zip(q.chunks(BLOCK)) {
        let (mut ap, mut aq, mut as_) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
        let mut add = |l: usize, a: f32, b: f32| {
            let (a, b) = (a - mp, b - mq);
            let ea = exp(a);
            ap[l] += ea;
            aq[l] += exp(b);
            as_[l] += ea * (a - b);
        };
        let (cp, cq) = (bp.chunks_exact(LANES), bq.chunks_exact(LANES));
        let (rp, rq) = (cp.remainder(), cq.remainder());
        for (xp, xq) in cp.zip(cq) {
            let (xp, xq): (&[f32; LANES], &[f32; LANES]) = match (xp.try_into(), xq.try_into()) {
                (Ok(a), Ok(b)) => (a, b),
                _ => continue,
            };
            for l in 0..LANES {
                add(l, xp[l], xq[l]);
            }
        }
        for (l, (&a, &b)) in rp.iter().zip(rq).enumerate() {
            add(l, a, b);
        }
        zp += ap.iter().map(|&v| f64::from(v)).sum::<f64>();
        zq += aq.iter().map(|&v| f64::from(v)).sum::<f64>();
        s += as_.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    let kl = s / zp - zp.ln() + zq.ln();
    Pending {
        kl: if kl.is_nan() {
            f32::NAN
        } else {
            kl.max(0.0) as f32
        },
        main_top1,
        other_top1,
    }
}

/// The first index of the largest value (0 for an empty row).
fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    u32::try_from(best).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_equal_rows_and_grows_with_difference() {
        let p = [1.0f32, 2.0, 3.0, 0.5];
        let (kl, a, b) = divergence_of(&p, &p);
        assert_eq!(kl, 0.0);
        assert_eq!((a, b), (2, 2));
        let q = [1.0f32, 3.5, 3.0, 0.5];
        let (kl2, a, b) = divergence_of(&p, &q);
        assert_eq!((a, b), (2, 1));
        // By hand: KL = Σ p log(p/q).
        let sm = |x: &[f32]| {
            let s: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
            x.iter().map(|&v| (v as f64).exp() / s).collect::<Vec<_>>()
        };
        let (pp, qq) = (sm(&p), sm(&q));
        let want: f64 = pp.iter().zip(&qq).map(|(a, b)| a * (a / b).ln()).sum();
        assert!((kl2 as f64 - want).abs() < 1e-6, "{kl2} vs {want}");
        let q3 = [1.0f32, 5.0, 3.0, 0.5];
        assert!(divergence_of(&p, &q3).0 > kl2);
    }

    /// A vocabulary-sized pair of rows, not a multiple of the lanes: the SIMD-shaped sums
    /// agree with a plain f64 computation.
    #[test]
    fn kl_of_vocabulary_sized_rows_matches_f64() {
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        let n = 49_152 + 5;
        let p: Vec<f32> = (0..n).map(|_| next() * 20.0 - 10.0).collect();
        for scale in [0.001f32, 0.1, 3.0] {
            let q: Vec<f32> = p.iter().map(|&v| v + scale * (next() - 0.5)).collect();
            let (kl, a, b) = divergence_of(&p, &q);
            let lse = |x: &[f32]| {
                let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
            };
            let (lp, lq) = (lse(&p), lse(&q));
            let want: f64 = p
                .iter()
                .zip(&q)
                .map(|(&x, &y)| {
                    let lx = x as f64 - lp;
                    lx.exp() * (lx - (y as f64 - lq))
                })
                .sum();
            assert!(
                (kl as f64 - want).abs() <= 1e-6 + 1e-4 * want,
                "scale {scale}: {kl} vs {want}"
            );
            assert_eq!((a, b), (argmax(&p), argmax(&q)));
        }
    }

    #[test]
    fn a_shifted_row_is_the_same_distribution() {
        let p = [0.1f32, -2.0, 4.0];
        let q: Vec<f32> = p.iter().map(|v| v + 10.0).collect();
        assert!(divergence_of(&p, &q).0.abs() < 1e-6);
    }
}
