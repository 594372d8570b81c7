//! Cache settings: [`CacheConfig`] (policy, budget and the policies' knobs), RoPE
//! [`Positions`], their defaults and their validation. Policy-specific defaults (sinks, the
//! protected window) come from the policy's registry entry; the numeric bounds from
//! [`limits`](super::limits).

use std::str::FromStr;

use serde::Serialize;

use super::limits;
use super::policy::{Fusion, GroupAgg, Phase, Policy, Settings};
use super::registry::PolicyKind;
use super::{KvType, ProfileType};
use crate::error::{Error, Result};

/// Prompt tokens run per forward pass during prefill.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;
/// Most recent tokens always kept, MorphKV's window of queries `R` (`--window`): its rows
/// cost bytes that buy budget elsewhere, and its faded history (below) carries the longer view.
pub const DEFAULT_WINDOW: usize = 4;
/// The other policies' protected window (`--window`), the span of recent tokens H2O and SnapKV
/// never evict (TOVA fixes its own; SnapKV's observation window is its own 32 queries).
pub const BASELINE_WINDOW: usize = 30;
/// MorphKV's weight of each token's accumulated attention beside its window's scores, per
/// cent (`--history`; 0 is the paper's method).
pub const DEFAULT_HISTORY: usize = 100;
/// The half-life of that accumulated attention, in tokens (`--half-life`).
pub const DEFAULT_HALF_LIFE: usize = 512;

/// Which positions RoPE sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Each token keeps its position in the conversation (as the paper does). Past the
    /// model's trained context, RoPE sees distances it was never trained on.
    #[default]
    Absolute,
    /// Positions are re-assigned inside the cache: a KV head's retained tokens are numbered
    /// 0..n in conversation order (StreamingLLM's remedy), so distances never exceed the cache
    /// size and a conversation can run past the trained context. Keys are stored before RoPE
    /// and rotated at their current rank when attended.
    Rebased,
}

impl FromStr for Positions {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "absolute" => Ok(Self::Absolute),
            "rebased" => Ok(Self::Rebased),
            _ => Err(Error::arg(
                "--positions",
                format!("`{s}` is not absolute or rebased"),
            )),
        }
    }
}

/// Cache settings: policy, budget and the policies' knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub policy: PolicyKind,
    /// Tokens kept per KV head per layer, the token being decoded included.
    pub budget: usize,
    /// Most recent tokens always kept (MorphKV's `R`; H2O's and SnapKV's protected recent
    /// span); `None`: the policy's default (see [`CacheConfig::window`]).
    pub window: Option<usize>,
    /// First tokens always kept; `None`: the policy's default (4 for streaming, 0 for the
    /// others).
    pub sinks: Option<usize>,
    /// Per cent of the budget kept for the most recent tokens whatever their scores (the
    /// window is kept in any case); `None`: the policy's default (MorphKV's three quarters,
    /// H2O's half, see [`CacheConfig::recent`]).
    pub recent: Option<usize>,
    pub fusion: Fusion,
    pub group_agg: GroupAgg,
    /// MorphKV: per cent weight of each slot's attention accumulated since it entered (H2O's
    /// signal, fading with `half_life`) added to the window's score; 0 is the paper's method.
    pub history: usize,
    /// MorphKV: half-life of that accumulated attention in tokens (0: it never fades).
    pub half_life: usize,
    /// Evict this many tokens at once when the cache is full (the paper's cheaper variant).
    pub evict_every: usize,
    /// Prompt tokens per forward pass; the cache compresses after each.
    pub prefill_chunk: usize,
    /// Absolute or re-based RoPE positions.
    pub positions: Positions,
    /// How keys and values are stored (f16 by default, as llama.cpp).
    pub kv_type: KvType,
    /// How the attention profile's rows are stored (MorphKV's window of rows, TOVA's and
    /// SnapKV's rows): 8-bit log codes (the default) or exact scaled f16.
    pub profile: ProfileType,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            policy: PolicyKind::MorphKv,
            budget: 600,
            window: None,
            sinks: None,
            recent: None,
            fusion: Fusion::Sum,
            group_agg: GroupAgg::Sum,
            history: DEFAULT_HISTORY,
            half_life: DEFAULT_HALF_LIFE,
            evict_every: 1,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            positions: Positions::Absolute,
            kv_type: KvType::default(),
            profile: ProfileType::default(),
        }
    }
}

impl CacheConfig {
    /// A cache that keeps everything.
    pub fn full() -> Self {
        Self {
            policy: PolicyKind::Full,
            ..Self::default()
        }
    }

    /// Sinks in effect.
    pub fn sinks(&self) -> usize {
        self.sinks.unwrap_or(self.policy.entry().sinks)
    }

    /// The window: the setting, else the policy's default (MorphKV's 4, the others' 30).
    pub fn window(&self) -> usize {
        self.window.unwrap_or(self.policy.entry().default_window)
    }

    /// Protected recent tokens in effect (the policy may fix it: TOVA keeps only the newest).
    pub fn effective_window(&self) -> usize {
        self.policy.entry().window.unwrap_or(self.window())
    }

    /// Per cent of the budget kept for recent tokens, in effect: the setting, else the
    /// policy's default.
    pub fn recent(&self) -> usize {
        self.recent.unwrap_or(self.policy.entry().recent)
    }

    /// Most recent tokens never evicted: the window, or the recent share of the budget where
    /// that is more, short of the whole budget (one slot beside the sinks stays open to
    /// scoring, so an eviction always finds a candidate).
    pub fn protected(&self) -> usize {
        // Both in range (validated): the product cannot overflow.
        let share = self.budget * self.recent() / 100;
        let room = self.budget.saturating_sub(self.sinks() + 1);
        self.effective_window().max(share.min(room))
    }

    /// Checks the settings, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(&|name| format!("--{name}"))
    }

    /// Checks every setting against its [`limits`] and against each other, with overflow-safe
    /// arithmetic. `origin` names where a setting came from (`budget` → `--budget`, or
    /// `budget in config.toml`), and the error names it.
    pub fn validate_with(&self, origin: &dyn Fn(&str) -> String) -> Result<()> {
        let checks = [
            (limits::BUDGET, self.budget),
            (limits::WINDOW, self.window()),
            (limits::SINKS, self.sinks.unwrap_or(0)),
            (limits::RECENT, self.recent.unwrap_or(0)),
            (limits::HISTORY, self.history),
            (limits::HALF_LIFE, self.half_life),
            (limits::EVICT_EVERY, self.evict_every),
            (limits::PREFILL_CHUNK, self.prefill_chunk),
        ];
        for (limit, v) in checks {
            limit
                .check(v)
                .map_err(|reason| Error::arg(origin(limit.name), reason))?;
        }
        // In range, so no sum below can overflow. A policy that never evicts has no floor.
        let floor = self.effective_window() + self.sinks() + 1;
        if self.budget < floor && self.evicts() {
            return Err(Error::arg(
                origin("budget"),
                format!(
                    "{} is smaller than window {} + sinks {} + 1: raise the budget to at least {floor} or lower the window/sinks",
                    self.budget,
                    self.effective_window(),
                    self.sinks()
                ),
            ));
        }
        Ok(())
    }

    /// The scorer these settings describe.
    pub fn build_policy(&self) -> Box<dyn Policy> {
        (self.policy.entry().build)(&Settings {
            window: self.window(),
            fusion: self.fusion,
            group_agg: self.group_agg,
            history: self.history,
            half_life: self.half_life,
        })
    }

    /// Whether the policy evicts at all (`full` never does).
    fn evicts(&self) -> bool {
        let policy = self.build_policy();
        policy.evicts(Phase::Prefill) || policy.evicts(Phase::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(policy: PolicyKind, budget: usize, recent: Option<usize>) -> CacheConfig {
        CacheConfig {
            policy,
            budget,
            recent,
            window: Some(30),
            ..CacheConfig::default()
        }
    }

    /// The protected span is the window or the recent share, whichever is more, and always
    /// leaves one slot beside the sinks to evict.
    #[test]
    fn protected_is_the_window_or_the_recent_share() {
        // H2O's default half, MorphKV's three quarters; none.
        assert_eq!(cfg(PolicyKind::H2o, 600, None).protected(), 300);
        assert_eq!(cfg(PolicyKind::MorphKv, 600, None).protected(), 450);
        assert_eq!(cfg(PolicyKind::MorphKv, 600, Some(0)).protected(), 30);
        assert_eq!(cfg(PolicyKind::MorphKv, 600, Some(75)).protected(), 450);
        // Rounded down; below the window the window wins.
        assert_eq!(cfg(PolicyKind::MorphKv, 601, Some(75)).protected(), 450);
        assert_eq!(cfg(PolicyKind::MorphKv, 100, Some(10)).protected(), 30);
        // All of it: one slot stays a candidate (streaming's four sinks too).
        assert_eq!(cfg(PolicyKind::MorphKv, 600, Some(100)).protected(), 599);
        assert_eq!(cfg(PolicyKind::Streaming, 600, Some(100)).protected(), 595);
        // TOVA's window is fixed at one token.
        assert_eq!(cfg(PolicyKind::Tova, 600, Some(0)).protected(), 1);
        let bad = cfg(PolicyKind::H2o, 600, Some(101)).validate().unwrap_err();
        assert!(bad.to_string().contains("--recent"), "{bad}");
    }

    /// The window follows the policy unless the settings give one: MorphKV's 4, the others'
    /// 30; TOVA's fixed window wins over any.
    #[test]
    fn each_policy_has_its_default_window_unless_one_is_given() {
        let of = |policy, window| CacheConfig {
            policy,
            window,
            ..CacheConfig::default()
        };
        assert_eq!(of(PolicyKind::MorphKv, None).window(), DEFAULT_WINDOW);
        assert_eq!(of(PolicyKind::H2o, None).window(), BASELINE_WINDOW);
        assert_eq!(
            of(PolicyKind::SnapKv, None).effective_window(),
            BASELINE_WINDOW
        );
        assert_eq!(of(PolicyKind::H2o, Some(8)).window(), 8);
        assert_eq!(of(PolicyKind::MorphKv, Some(30)).effective_window(), 30);
        assert_eq!(of(PolicyKind::Tova, Some(30)).effective_window(), 1);
        // MorphKV's scorer keeps rows for its own window, not the others'.
        assert_eq!(
            of(PolicyKind::MorphKv, None).build_policy().needs().rows,
            DEFAULT_WINDOW
        );
        // A budget below another policy's default window is refused by the window's value.
        let small = CacheConfig {
            budget: 20,
            ..of(PolicyKind::H2o, None)
        };
        let e = small.validate().unwrap_err().to_string();
        assert!(e.contains("window 30"), "{e}");
        assert!(of(PolicyKind::MorphKv, None).validate().is_ok());
    }
}
