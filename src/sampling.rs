//! Choosing the next token from logits: repetition penalty, then top-k, top-p and min-p
//! filtering, then temperature and a seeded draw (llama.cpp's order). `temp <= 0` is greedy.

use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{Error, Result};

/// Sampling settings; the defaults are llama.cpp's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Temperature; 0 means greedy.
    pub temp: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 disables.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temp: 0.0,
            ..Self::default()
        }
    }

    /// Checks every value, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<()> {
        let finite = |flag: &str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::arg(flag, format!("{v} is not a finite number")))
            }
        };
        finite("--temp", self.temp)?;
        finite("--top-p", self.top_p)?;
        finite("--min-p", self.min_p)?;
        finite("--repeat-penalty", self.repeat_penalty)?;
        if self.temp < 0.0 {
            return Err(Error::arg(
                "--temp",
                format!("{} is negative: use 0 for greedy", self.temp),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::arg(
                "--top-p",
                format!("{} is outside (0, 1]", self.top_p),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::arg(
                "--min-p",
                format!("{} is outside [0, 1]", self.min_p),
            ));
        }
        if self.repeat_penalty <= 0.0 {
            return Err(Error::arg(
                "--repeat-penalty",
                format!("{} must be > 0 (1 disables it)", self.repeat_penalty),
            ));
        }
        Ok(())
    }
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; fails on invalid parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// The settings in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry), given the tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.temp <= 0.0 && p.repeat_penalty == 1.0 {
            return argmax(logits);
        }
        let mut logits = logits.to_vec();
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                let Some(l) = logits.get_mut(t as usize) else {
                    continue;
                };
                if seen.insert(t) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temp <= 0.0 {
            return argmax(&logits);
        }
        // Candidates sorted by logit, most likely first.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            cand.truncate(p.top_k.max(1));
        }
        let probs = softmax(cand.iter().map(|c| c.1), 1.0);
        let mut keep = cand.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&pr| pr >= floor).count().max(1));
        }
        cand.truncate(keep.max(1));
        let weights = softmax(cand.iter().map(|c| c.1), p.temp);
        match WeightedIndex::new(&weights) {
            Ok(dist) => cand[dist.sample(&mut self.rng)].0,
            Err(_) => cand[0].0,
        }
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temp: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| ((l - max) / temp).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&logits(), &[]), 1);
    }

    #[test]
    fn repeat_penalty_demotes_recent_tokens() {
        let params = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params).unwrap();
        // 1 seen recently: 3.0 / 2 = 1.5 < 2.9, so 4 wins.
        assert_eq!(s.sample(&logits(), &[1]), 4);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let params = SamplingParams {
            temp: 5.0,
            top_k: 1,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&logits(), &[]), 1);
        }
    }

    #[test]
    fn min_p_removes_unlikely_tokens() {
        let params = SamplingParams {
            temp: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params).unwrap();
        // exp(2.0-3.0)=0.37 < 0.5, exp(2.9-3.0)=0.90 ≥ 0.5: only 1 and 4 survive.
        for _ in 0..200 {
            let t = s.sample(&logits(), &[]);
            assert!(t == 1 || t == 4, "sampled {t}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let params = SamplingParams {
            temp: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params).unwrap();
        let l = vec![10.0, 0.0, 0.0];
        for _ in 0..100 {
            assert_eq!(s.sample(&l, &[]), 0);
        }
    }

    #[test]
    fn same_seed_same_draws_and_temperature_spreads() {
        let params = SamplingParams {
            temp: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplingParams::default()
        };
        let draw = |p: SamplingParams| {
            let mut s = Sampler::new(p).unwrap();
            (0..100)
                .map(|_| s.sample(&logits(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(params.clone());
        assert_eq!(a, draw(params.clone()));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(
            distinct.len() >= 3,
            "temperature 1.5 should spread draws: {distinct:?}"
        );
        let other = draw(SamplingParams { seed: 8, ..params });
        assert_ne!(a, other);
    }

    #[test]
    fn invalid_values_name_their_flag() {
        let bad = [
            (
                SamplingParams {
                    temp: -1.0,
                    ..Default::default()
                },
                "--temp",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "--top-p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "--top-p",
            ),
            (
                SamplingParams {
                    min_p: 2.0,
                    ..Default::default()
                },
                "--min-p",
            ),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..Default::default()
                },
                "--repeat-penalty",
            ),
            (
                SamplingParams {
                    temp: f32::NAN,
                    ..Default::default()
                },
                "--temp",
            ),
        ];
        for (p, flag) in bad {
            let e = Sampler::new(p).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }
}
