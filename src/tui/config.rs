//! `config.toml` in the config folder: the chat's defaults. Every value is checked as it is
//! read (cache settings against their limits), and an error names the file, the line and the
//! column.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The chat's defaults; flags override them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: Option<String>,
    pub policy: Option<String>,
    #[serde(default, deserialize_with = "crate::cache::limits::deserialize_budget")]
    pub budget: Option<usize>,
    #[serde(default, deserialize_with = "crate::cache::limits::deserialize_window")]
    pub window: Option<usize>,
    /// Per cent of the budget kept for the most recent tokens (`--recent`).
    #[serde(default, deserialize_with = "crate::cache::limits::deserialize_recent")]
    pub recent: Option<usize>,
    /// MorphKV: per cent weight of the fading sum of past attention (`--history`).
    #[serde(
        default,
        deserialize_with = "crate::cache::limits::deserialize_history"
    )]
    pub history: Option<usize>,
    /// MorphKV: that sum's half-life in tokens (`--half-life`).
    #[serde(
        default,
        deserialize_with = "crate::cache::limits::deserialize_half_life"
    )]
    pub half_life: Option<usize>,
    /// How keys and values are stored: f32, f16 or q8_0.
    #[serde(default, deserialize_with = "crate::cache::deserialize_kv_type")]
    pub kv_type: Option<crate::cache::KvType>,
    /// How MorphKV's attention profile is stored: f16 or log8.
    #[serde(default, deserialize_with = "crate::cache::deserialize_profile")]
    pub profile: Option<crate::cache::ProfileType>,
    pub theme: Option<String>,
    pub system_prompt: Option<String>,
    /// How the weights are held (`--weights`): auto, hybrid, native, f32 or q8_0.
    #[serde(default, deserialize_with = "deserialize_weights")]
    pub weights: Option<String>,
    /// Where the model runs (`--device`): auto, cpu, cuda[:N] or metal[:N].
    #[serde(default, deserialize_with = "deserialize_device")]
    pub device: Option<String>,
    /// Action name → key, e.g. `regenerate = "ctrl+g"`.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

/// A `weights` value, checked as `--weights` is.
fn deserialize_weights<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<crate::model::WeightFormat>()
        .map_err(|e| serde::de::Error::custom(reason(e)))?;
    Ok(Some(s))
}

/// A `device` value, checked as `--device` is (whether this build can open it is known when
/// the model loads).
fn deserialize_device<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<crate::device::DeviceSpec>()
        .map_err(|e| serde::de::Error::custom(reason(e)))?;
    Ok(Some(s))
}

/// What is wrong with a value, without the flag's name (the file's line says where).
fn reason(e: crate::Error) -> String {
    match e {
        crate::Error::InvalidArg { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Parses `text`, the content of `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
    toml::from_str(text).map_err(|e| {
        format!(
            "{} (keys: model, weights, device, policy, budget, window, recent, history, half_life, kv_type, profile, theme, system_prompt, and a [keys] table)",
            toml_error(path, text, &e)
        )
    })
}

/// `dir/config.toml`, or the defaults where there is none.
pub fn read(dir: &Path) -> Result<Config, String> {
    let path = dir.join("config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// `path:line:column: message` for a TOML error, on one line.
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map(|span| {
        let (line, col) = crate::error::line_col(text, span.start);
        format!(":{line}:{col}")
    });
    format!(
        "{}{}: {}",
        path.display(),
        at.unwrap_or_default(),
        e.message().trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line_and_column() {
        let path = Path::new("/x/config.toml");
        let e = parse("policy = \"h2o\"\n\nbudget = 99999999999\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:3:10: "), "{e}");
        assert!(e.contains("between 1 and"), "{e}");
        let e = parse("window = -3\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:1:10: "), "{e}");
        let e = parse("[keys]\nquit = 3\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:2:8: "), "{e}");
        let e = parse("budget = 300\nkv_type = \"q4\"\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:2:11: "), "{e}");
        assert!(
            e.contains("`q4` is not a KV type") && e.contains("q8_0"),
            "{e}"
        );
        let e = parse("profile = \"u4\"\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:1:11: "), "{e}");
        assert!(
            e.contains("`u4` is not a profile storage") && e.contains("log8"),
            "{e}"
        );
        let e = parse("budget = 300\nhistory = 1001\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:2:11: "), "{e}");
        assert!(e.contains("history must be between 0 and 1000"), "{e}");
        let e = parse("half_life = -1\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:1:13: "), "{e}");
        let ok = parse(
            "budget = 300\nwindow = 20\nkv_type = \"Q8_0\"\nprofile = \"f16\"\nhistory = 0\nhalf_life = 64\n",
            path,
        )
        .unwrap();
        assert_eq!((ok.history, ok.half_life), (Some(0), Some(64)));
        let e = parse("weights = \"q3\"\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:1:11: "), "{e}");
        assert!(
            e.contains("`q3` is not one of") && e.contains("q8_0"),
            "{e}"
        );
        let e = parse("model = \"m\"\ndevice = \"tpu\"\n", path).unwrap_err();
        assert!(e.starts_with("/x/config.toml:2:10: "), "{e}");
        assert!(e.contains("`tpu` is not auto, cpu"), "{e}");
        let both = parse("weights = \"q8_0\"\ndevice = \"cpu\"\n", path).unwrap();
        assert_eq!(
            (both.weights.as_deref(), both.device.as_deref()),
            (Some("q8_0"), Some("cpu"))
        );
        assert_eq!(ok.profile, Some(crate::cache::ProfileType::F16));
        assert_eq!((ok.budget, ok.window), (Some(300), Some(20)));
        assert_eq!(ok.kv_type, Some(crate::cache::KvType::Q8_0));
    }
}
