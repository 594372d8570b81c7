//! Mutation test over the real default model: hundreds of damaged copies of its header
//! (byte flips, overwritten lengths, counts, dimensions, offsets and types, truncations). Each
//! must either load and run, or fail with an error that names the file: never a panic, an
//! abort or a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::{DType, Device};
use common::gguf_edit::Gguf;
use morphkv::cache::KvCache;
use morphkv::model::{Logits, WeightFormat};

/// A deterministic generator (xorshift64*), so every run tries the same mutants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One damaged file: bytes written over the original at `at`, or the file cut at `cut`.
#[derive(Debug, Clone)]
enum Mutant {
    Patch { at: usize, bytes: Vec<u8> },
    Truncate { cut: usize },
}

fn mutants(original: &[u8], g: &Gguf) -> Vec<(String, Mutant)> {
    let mut rng = Rng(0x6d6f_7270_686b_7621);
    let mut out = Vec::new();
    // Byte flips anywhere in the header (metadata, tokenizer, tensor index).
    for _ in 0..250 {
        let at = rng.below(g.header_end);
        let n = 1 + rng.below(4).min(g.header_end - at - 1);
        let bytes: Vec<u8> = original[at..at + n]
            .iter()
            .map(|b| b ^ (1 + rng.below(255)) as u8)
            .collect();
        out.push((
            format!("flip {n} bytes at {at}"),
            Mutant::Patch { at, bytes },
        ));
    }
    // Length, count, dimension and offset fields overwritten with hostile values.
    for _ in 0..150 {
        let f = g.fields[rng.below(g.fields.len())];
        let old = u64::from_le_bytes(original[f.at..f.at + 8].try_into().unwrap());
        let choices = [
            0,
            1,
            2,
            u64::from(u32::MAX),
            u64::MAX,
            1 << 63,
            1 << 32,
            old.wrapping_add(1),
            old.wrapping_sub(1),
            old.wrapping_mul(2),
            old.wrapping_add(4096),
            original.len() as u64,
        ];
        let v = choices[rng.below(choices.len())];
        out.push((
            format!("field at {} = {v}", f.at),
            Mutant::Patch {
                at: f.at,
                bytes: v.to_le_bytes()[..f.width].to_vec(),
            },
        ));
    }
    // Tensor types overwritten (known, unknown and mismatched ones).
    for _ in 0..50 {
        let t = &g.tensors[rng.below(g.tensors.len())];
        let ty = rng.below(40) as u32;
        out.push((
            format!("{} type {ty}", t.name),
            Mutant::Patch {
                at: t.dtype_at,
                bytes: ty.to_le_bytes().to_vec(),
            },
        ));
    }
    // Numeric metadata values (sizes, RoPE base, norm epsilon, token ids) overwritten.
    let numeric: Vec<_> = g.kvs.iter().filter(|k| k.ty == 4 || k.ty == 6).collect();
    for _ in 0..30 {
        let k = numeric[rng.below(numeric.len())];
        let v = match rng.below(4) {
            0 => 0u32,
            1 => u32::MAX,
            2 => f32::NAN.to_bits(),
            _ => rng.next() as u32,
        };
        out.push((
            format!("{} = {v:#x}", k.key),
            Mutant::Patch {
                at: k.at.start,
                bytes: v.to_le_bytes().to_vec(),
            },
        ));
    }
    // Truncations: mostly inside the header, a few inside the tensor data.
    for i in 0..50 {
        let cut = if i < 45 {
            rng.below(g.header_end + 64)
        } else {
            g.data_start + rng.below(original.len() - g.data_start)
        };
        out.push((format!("cut at {cut}"), Mutant::Truncate { cut }));
    }
    out
}

/// Loads `path` and, if it loads, runs two tokens through it. Ok(None): it ran; Ok(Some(e)):
/// it failed with error `e`.
fn try_model(path: &Path) -> Option<String> {
    let (model, tok) = match morphkv::model::load(path, &Device::Cpu, WeightFormat::Native) {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    let ids = match tok.encode_plain("Hello world") {
        Ok(ids) if !ids.is_empty() => ids,
        Ok(_) => return None,
        Err(e) => return Some(e.to_string()),
    };
    let mut cache = match KvCache::new(model.config(), DType::F32, &Device::Cpu) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    for id in ids.iter().take(2) {
        if let Err(e) = model.forward(&[*id], &mut cache, Logits::Last) {
            return Some(e.to_string());
        }
    }
    None
}

/// Runs `try_model` on a thread of its own: a panic is caught, and a run past the deadline
/// is reported as a hang.
fn guarded(path: &Path) -> Result<Option<String>, String> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| try_model(&p));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(p)) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
        Err(_) => Err("hung (over 60 s)".into()),
    }
}

#[test]
fn damaged_copies_of_the_default_model_never_crash_or_hang() {
    let original = std::fs::read(common::default_model()).unwrap();
    let g = Gguf::parse(&original);
    let all = mutants(&original, &g);
    assert!(all.len() >= 500, "only {} mutants", all.len());

    let dir = std::env::temp_dir().join(format!("morphkv-mutants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let patched: PathBuf = dir.join("mutant.gguf");
    std::fs::write(&patched, &original).unwrap();

    let (mut failures, mut refused, mut ran) = (Vec::new(), 0, 0);
    for (what, m) in &all {
        let path = match m {
            Mutant::Patch { at, bytes } => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&patched)
                    .unwrap();
                f.seek(SeekFrom::Start(*at as u64)).unwrap();
                f.write_all(bytes).unwrap();
                patched.clone()
            }
            Mutant::Truncate { cut } => {
                let p = dir.join("cut.gguf");
                std::fs::write(&p, &original[..*cut]).unwrap();
                p
            }
        };
        match guarded(&path) {
            Ok(None) => ran += 1,
            Ok(Some(e)) => {
                refused += 1;
                if !e.contains(path.to_str().unwrap()) {
                    failures.push(format!("{what}: the error does not name the file: {e}"));
                }
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
        if let Mutant::Patch { at, bytes } = m {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&patched)
                .unwrap();
            f.seek(SeekFrom::Start(*at as u64)).unwrap();
            f.write_all(&original[*at..*at + bytes.len()]).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "{} mutants: {refused} refused with an error, {ran} loaded and ran, {} failures",
        all.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Most damage is caught before any tensor is read.
    assert!(refused > all.len() / 3, "only {refused} refused");
}
