//! Speed of the quantized matrix × vector kernels on K-quant weights (Q4_K, Q5_K, Q6_K)
//! against candle's own (`QMatMul::forward` on one row) and against our Q4_0 kernel on the
//! same shapes, in GB/s of weights read; and of a 16-row prompt product (`kernels::matmat`
//! against candle's). The weights are random bytes (finite scales): speed does not depend on
//! the values.
//!
//! `cargo run --release --example kquant_speed` (`RAYON_NUM_THREADS=1` for one core).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use morphkv::kernels::{self, Packed, QActs, QKind};
use rand::{Rng, SeedableRng};

/// `kind`'s GGML blocks for a (rows, cols) matrix: random bytes, scales set to small finite
/// values.
fn blocks(kind: QKind, rows: usize, cols: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let bb = kind.block_bytes();
    let mut data: Vec<u8> = (0..rows * cols / kind.block_values() * bb)
        .map(|_| rng.random())
        .collect();
    let halves: &[usize] = match kind {
        QKind::Q4_0 | QKind::Q8_0 => &[0],
        QKind::Q4_1 | QKind::Q4K | QKind::Q5K => &[0, 2],
        QKind::Q6K => &[208],
    };
    for blk in data.chunks_exact_mut(bb) {
        for &at in halves {
            let v = f16::from_f32(rng.random_range(0.001..0.01)).to_bits();
            blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    data
}

fn dtype(kind: QKind) -> GgmlDType {
    match kind {
        QKind::Q4_0 => GgmlDType::Q4_0,
        QKind::Q4_1 => GgmlDType::Q4_1,
        QKind::Q8_0 => GgmlDType::Q8_0,
        QKind::Q4K => GgmlDType::Q4K,
        QKind::Q5K => GgmlDType::Q5K,
        QKind::Q6K => GgmlDType::Q6K,
    }
}

/// The best time of `f` over runs filling about `budget`.
fn best(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let (start, mut best) = (Instant::now(), Duration::MAX);
    while start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

fn main() -> Result<()> {
    let budget = Duration::from_millis(1500);
    let threads = rayon::current_num_threads();
    println!("rayon threads: {threads}");
    for (rows, cols) in [(2048, 8192), (8192, 2048)] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let xt = Tensor::from_slice(&x, (1, cols), &Device::Cpu)?;
        let prompt: Vec<f32> = (0..16 * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let pt = Tensor::from_slice(&prompt, (16, cols), &Device::Cpu)?;
        println!("\n{rows} x {cols}");
        let mut base = None;
        for kind in [QKind::Q4_0, QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let data = blocks(kind, rows, cols);
            let gb = data.len() as f64 / 1e9;
            let Some(w) = Packed::from_ggml(kind, rows, cols, &data) else {
                anyhow::bail!("{kind:?} does not fit {rows} x {cols}");
            };
            let storage = QStorage::from_data(Cow::Borrowed(&data), &Device::Cpu, dtype(kind))?;
            let mm = QMatMul::from_qtensor(QTensor::new(storage, (rows, cols))?)?;
            let (mut acts, mut out) = (QActs::default(), vec![0f32; rows]);
            let ours = best(budget, || {
                acts.quantize(&x);
                kernels::matvec(&w, &acts, &mut out);
            });
            let theirs = best(budget, || {
                let _ = mm.forward(&xt).map(|y| y.dims().len());
            });
            let ns_per_byte = ours.as_secs_f64() / data.len() as f64;
            let rel = base.get_or_insert(ns_per_byte);
            let mut pacts = vec![QActs::default(); 16];
            let mut pout = vec![0f32; 16 * rows];
            let ours16 = best(budget, || {
                for (a, xs) in pacts.iter_mut().zip(prompt.chunks_exact(cols)) {
                    a.quantize(xs);
                }
                kernels::matmat(&w, &pacts, &mut pout);
            });
            let theirs16 = best(budget, || {
                let _ = mm.forward(&pt).map(|y| y.dims().len());
            });
            println!(
                "{kind:?}: ours {:.3} ms {:.1} GB/s ({:.2}x Q4_0 per byte) | candle {:.3} ms {:.1} GB/s | 16 rows: ours {:.2} ms, candle {:.2} ms",
                ours.as_secs_f64() * 1e3,
                gb / ours.as_secs_f64(),
                ns_per_byte / *rel,
                theirs.as_secs_f64() * 1e3,
                gb / theirs.as_secs_f64(),
                ours16.as_secs_f64() * 1e3,
                theirs16.as_secs_f64() * 1e3,
            );
        }
    }
    Ok(())
}
