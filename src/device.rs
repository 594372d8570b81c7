//! `--device`: where the weights, the KV cache and the attention run.
//!
//! `auto` (the default) takes the best device this build can use: the first CUDA GPU, else the
//! Apple GPU, else the CPU. A device the build was not compiled for, or that is not there, is a
//! clear error naming the flag and what to do, never a silent fallback: a user who asks for a GPU
//! wants to know they are not getting one.

use candle_core::Device;

use crate::error::{Error, Result};

/// A parsed `--device` value, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The best one available.
    Auto,
    Cpu,
    /// CUDA GPU by ordinal.
    Cuda(usize),
    /// Apple GPU by ordinal.
    Metal(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::arg(
                "--device",
                format!("`{s}` is not auto, cpu, cuda, cuda:N, metal or metal:N"),
            )
        };
        let (kind, ordinal) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n.parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        Ok(match (kind, ordinal) {
            ("auto", None) => Self::Auto,
            ("cpu", None) => Self::Cpu,
            ("cuda", n) => Self::Cuda(n.unwrap_or(0)),
            ("metal", n) => Self::Metal(n.unwrap_or(0)),
            _ => return Err(bad()),
        })
    }
}

impl DeviceSpec {
    /// Opens the device: `Auto` falls back to the CPU, an explicit GPU never does.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Auto => Ok(best()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n),
            Self::Metal(n) => open_metal(n),
        }
    }
}

/// The first CUDA GPU, else the first Apple GPU, else the CPU.
pub fn best() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if candle_core::utils::metal_is_available() {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A short name for stats and reports: `cpu`, `cuda:0`, `metal:0`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

fn open_cuda(n: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::arg(
            "--device",
            format!(
                "cuda:{n} asked for, but this morphkv was built without CUDA: rebuild with \
                 `cargo build --release --features cuda` (README, \"GPU\"), or pass --device cpu"
            ),
        ));
    }
    Device::new_cuda(n).map_err(|e| {
        Error::arg(
            "--device",
            format!(
                "cannot open CUDA GPU {n} ({e}); check `nvidia-smi`, the driver, and that \
                 LD_LIBRARY_PATH reaches libcublas, libcurand and libcudart; or pass --device cpu"
            ),
        )
    })
}

fn open_metal(n: usize) -> Result<Device> {
    if !candle_core::utils::metal_is_available() {
        return Err(Error::arg(
            "--device",
            format!(
                "metal:{n} asked for, but this morphkv was built without Metal: rebuild with \
                 `cargo build --release --features metal` on a Mac, or pass --device cpu"
            ),
        ));
    }
    Device::new_metal(n).map_err(|e| {
        Error::arg(
            "--device",
            format!("cannot open Apple GPU {n} ({e}); pass --device cpu"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_names_the_flag_on_bad_input() {
        assert_eq!("auto".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Auto));
        assert_eq!("cpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cuda(0)));
        assert_eq!(
            "cuda:3".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(3))
        );
        assert_eq!(
            "metal:1".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Metal(1))
        );
        for bad in ["gpu", "cuda:x", "cpu:1", "", "cuda:-1"] {
            let e = bad.parse::<DeviceSpec>().err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(e.contains("--device"), "{bad}: {e}");
        }
    }

    #[test]
    fn cpu_opens_and_is_named() {
        let d = DeviceSpec::Cpu.open().ok();
        assert!(d.as_ref().is_some_and(Device::is_cpu));
        assert_eq!(d.map(|d| name(&d)).as_deref(), Some("cpu"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let e = DeviceSpec::Cuda(0).open().err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.contains("--features cuda") && e.contains("--device cpu"),
            "{e}"
        );
        // auto quietly takes the CPU in such a build.
        assert!(DeviceSpec::Auto.open().is_ok_and(|d| d.is_cpu()));
    }
}
