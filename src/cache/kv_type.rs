//! How the cache stores keys and values: [`KvType`] (f32, f16, or llama.cpp's Q8_0 blocks),
//! the storage each takes per row of `head_dim` values, and its parsing (`--kv-type`).
//!
//! f32 and f16 rows are tensors of that element type; a Q8_0 row is bytes, `head_dim / 32`
//! blocks of one f16 scale and 32 signed 8-bit values (GGML's `block_q8_0`, 34 bytes), held
//! in a u8 tensor on the CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernels::{Q8_BLOCK, Q8_BLOCK_BYTES};

/// The element type of the cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum KvType {
    /// 4 bytes per value: exact.
    #[serde(rename = "f32")]
    F32,
    /// 2 bytes per value (llama.cpp's default).
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// 34 bytes per 32 values: an f16 scale and 32 signed bytes per block (CPU only).
    #[serde(rename = "q8_0")]
    Q8_0,
}

/// The values `--kv-type` takes, for help texts and errors.
pub const KV_TYPE_LIST: &str = "f32, f16, q8_0";

impl KvType {
    /// Every type, in the order of [`KV_TYPE_LIST`].
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::Q8_0];

    /// The name `--kv-type` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The element type of the tensors holding the rows (u8 for Q8_0's bytes).
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Q8_0 => DType::U8,
        }
    }

    /// The type whose rows are tensors of `dtype`: f32 or f16; an error otherwise.
    pub fn from_dtype(dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Ok(Self::F32),
            DType::F16 => Ok(Self::F16),
            other => Err(Error::arg(
                "cache",
                format!("keys and values are stored as f32 or f16 tensors, not {other:?}"),
            )),
        }
    }

    /// Elements of [`KvType::dtype`] holding one row of `head_dim` values.
    pub fn row_len(self, head_dim: usize) -> usize {
        match self {
            Self::F32 | Self::F16 => head_dim,
            Self::Q8_0 => head_dim / Q8_BLOCK * Q8_BLOCK_BYTES,
        }
    }

    /// Bytes of one row of `head_dim` values.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        self.row_len(head_dim) * self.dtype().size_in_bytes()
    }

    /// Checks that a model of `head_dim` values per head can be stored as this type on
    /// `device`: Q8_0 needs whole blocks and the CPU.
    pub fn check(self, head_dim: usize, device: &candle_core::Device) -> Result<()> {
        self.check_from("--kv-type", head_dim, device)
    }

    /// [`KvType::check`], the error naming `origin` (the flag or the config file's key the
    /// type came from).
    pub fn check_from(
        self,
        origin: &str,
        head_dim: usize,
        device: &candle_core::Device,
    ) -> Result<()> {
        if self != Self::Q8_0 {
            return Ok(());
        }
        if !device.is_cpu() {
            return Err(Error::arg(
                origin,
                "q8_0 runs on the CPU only (choose f16 or f32 on a GPU)",
            ));
        }
        if !head_dim.is_multiple_of(Q8_BLOCK) {
            return Err(Error::arg(
                origin,
                format!("q8_0 needs a head size that is a multiple of {Q8_BLOCK}, not {head_dim} (choose f16 or f32 for this model)"),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl KvType {
    /// The type named `s` (case and surrounding space ignored).
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s.trim().to_ascii_lowercase())
    }
}

impl FromStr for KvType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s).ok_or_else(|| {
            Error::arg(
                "--kv-type",
                format!("`{s}` is not a KV type: choose from {KV_TYPE_LIST}"),
            )
        })
    }
}

/// A KV type in a config file (`kv_type = "q8_0"`), for serde
/// (`#[serde(default, deserialize_with = "...")]`): an unknown name is an error at its line.
pub fn deserialize_kv_type<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<KvType>, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    KvType::from_name(&s).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{s}` is not a KV type: choose from {KV_TYPE_LIST}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_types_parse_print_and_size_their_rows() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>().unwrap(), t);
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!("F16".parse::<KvType>().unwrap(), KvType::F16);
        let e = "q4_0".parse::<KvType>().unwrap_err().to_string();
        assert!(e.contains("--kv-type") && e.contains(KV_TYPE_LIST), "{e}");
        let sizes: Vec<usize> = KvType::ALL.iter().map(|t| t.row_bytes(64)).collect();
        assert_eq!(sizes, [256, 128, 68]);
        assert_eq!(KvType::default(), KvType::F16);
    }
}
