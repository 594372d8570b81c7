//! The policy registry: every eviction policy, what it declares about itself, and the names,
//! lists and help strings derived from them.
//!
//! A policy is one file beside this one (`cache/NAME.rs`) that implements [`Policy`] and
//! declares `pub const ENTRY: Entry` (its name, default sinks, protected window, one-line
//! description and constructor), plus one line in the `policies!` table in `cache.rs`. That
//! line declares the module, gives the policy a [`PolicyKind`] constant and a row in the
//! table, from which [`PolicyKind`]'s parsing, naming and serialisation, [`POLICIES`],
//! [`POLICY_LIST`] (the CLI's and `/help`'s list) and [`EVICTING_POLICIES`] all follow. A line
//! may carry `#[cfg(test)]` for a policy that exists only in tests.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::policy::{Policy, Settings};
use super::TABLE;
use crate::error::{Error, Result};

/// What a policy declares about itself, in its own file.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Registry name: `--policy`, `/set policy`, presets and serialised settings use it.
    pub name: &'static str,
    /// One line saying what the policy keeps, for help texts.
    pub about: &'static str,
    /// First tokens always kept when the settings do not say (`--sinks`).
    pub sinks: usize,
    /// Recent tokens protected whatever the configured window (TOVA: only the newest);
    /// `None`: the configured window.
    pub window: Option<usize>,
    /// The window when the settings do not say (`--window`).
    pub default_window: usize,
    /// Per cent of the budget kept for the most recent tokens when the settings do not say
    /// (`--recent`; the window is protected in any case).
    pub recent: usize,
    /// The scorer for given settings.
    pub build: fn(&Settings) -> Box<dyn Policy>,
}

/// One row of the table: a policy's entry and the name of its [`PolicyKind`] constant.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The constant's name (`MorphKv`), which `{:?}` prints.
    pub ident: &'static str,
    pub entry: Entry,
}

/// Declares the registered policies, one line each: `Const => module,` (optionally preceded
/// by `#[cfg(...)]`). Each line declares `mod module;` (a file beside `cache.rs` holding
/// `pub const ENTRY: Entry`), the constant `PolicyKind::Const`, and the policy's row in the
/// table; the order of the lines is the order every list shows.
macro_rules! policies {
    ($($(#[cfg($cfg:meta)])? $kind:ident => $module:ident,)*) => {
        $($(#[cfg($cfg)])? mod $module;)*

        /// Table index of each policy.
        enum Index {
            $($(#[cfg($cfg)])? $kind,)*
        }

        #[allow(non_upper_case_globals)]
        impl registry::PolicyKind {
            $(
                $(#[cfg($cfg)])?
                #[doc = concat!("The `", stringify!($module), "` policy.")]
                pub const $kind: Self = Self(Index::$kind as u8);
            )*
        }

        /// The registered policies, in the order every list shows them.
        const TABLE: &[registry::Row] = &[
            $(
                $(#[cfg($cfg)])?
                registry::Row {
                    ident: stringify!($kind),
                    entry: $module::ENTRY,
                },
            )*
        ];
    };
}
pub(super) use policies;

/// Which eviction policy runs the cache: a registered policy (see [`POLICIES`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PolicyKind(pub(super) u8);

impl PolicyKind {
    /// Every registered policy, in registry order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..TABLE.len()).map(|i| Self(i as u8))
    }

    /// The policy registered as `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::all().find(|p| p.name() == name)
    }

    /// What the policy declares about itself.
    pub fn entry(self) -> &'static Entry {
        &TABLE[usize::from(self.0)].entry
    }

    /// Registry name.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// One line saying what the policy keeps.
    pub fn about(self) -> &'static str {
        self.entry().about
    }
}

impl fmt::Debug for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TABLE[usize::from(self.0)].ident)
    }
}

impl Serialize for PolicyKind {
    /// As a unit variant named after the policy (`"morphkv"` in JSON).
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_unit_variant("PolicyKind", u32::from(self.0), self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::named(s).ok_or_else(|| {
            Error::arg(
                "--policy",
                format!("unknown policy `{s}` (known: {})", POLICIES.join(", ")),
            )
        })
    }
}

/// The registered policies' names, in the order the CLI lists them.
pub const POLICIES: [&str; TABLE.len()] = {
    let mut names = [""; TABLE.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = TABLE[i].entry.name;
        i += 1;
    }
    names
};

/// The policies' names as help texts list them: `full, streaming, …`.
pub const POLICY_LIST: &str = utf8(&LIST);
const LIST: [u8; joined_len(", ", "")] = join(", ", "");

/// Every policy but `full`, comma-separated: what an evaluation compares with the full cache
/// by default.
pub const EVICTING_POLICIES: &str = utf8(&EVICTING);
const EVICTING: [u8; joined_len(",", "full")] = join(",", "full");

/// Whether two strings are equal, at compile time.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Length of the registry's names joined by `sep`, leaving out `skip`.
const fn joined_len(sep: &str, skip: &str) -> usize {
    let (mut len, mut n, mut i) = (0, 0usize, 0);
    while i < TABLE.len() {
        let name = TABLE[i].entry.name;
        if !same(name, skip) {
            len += name.len();
            n += 1;
        }
        i += 1;
    }
    len + sep.len() * n.saturating_sub(1)
}

/// The registry's names joined by `sep`, leaving out `skip`, as bytes.
const fn join<const N: usize>(sep: &str, skip: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let (mut at, mut i) = (0, 0);
    while i < TABLE.len() {
        let name = TABLE[i].entry.name;
        if !same(name, skip) {
            let parts = [if at == 0 { "" } else { sep }, name];
            let mut p = 0;
            while p < parts.len() {
                let bytes = parts[p].as_bytes();
                let mut b = 0;
                while b < bytes.len() {
                    out[at] = bytes[b];
                    at += 1;
                    b += 1;
                }
                p += 1;
            }
        }
        i += 1;
    }
    out
}

/// Bytes joined from `str`s as a `str`, at compile time.
const fn utf8(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("policy names are UTF-8"),
    }
}
