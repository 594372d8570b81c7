//! Speed of the quantized matrix × vector kernels on K-quant weights (Q4_K, Q5_K, Q6_K)
//! against candle's own (`QMatMul::forward` on one row) and against our Q4_0 kernel on the
//! same shapes, in GB/s of weights read; and of a 16-row prompt product (`kernels::matmat`
//! against candle's). The weights are random bytes (finite scales): speed does not depend on
//! the values.
//!
//! And prompt products (16, 64, 512 rows) against the model's dequantize-and-GEMM path.
//!
//! And `--memory`: single tokens against weights read from memory, not from the caches: 40
//! matrices of 8,192 × 2,048 (376-648 MB) one after the other, as a decoding step reads a
//! model's weights.
//!
//! `cargo run --release --example kquant_speed [-- --prompts | --memory]`
//! (`RAYON_NUM_THREADS=1` for one core; `--prompts`: only the prompt products;
//! `MORPHKV_NO_AVX512=1`: the AVX2 kernels and the row layout).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use morphkv::kernels::{self, Packed, QActs, QKind};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

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
    if std::env::args().any(|a| a == "--prompts") {
        return prompts(budget);
    }
    if std::env::args().any(|a| a == "--memory") {
        return from_memory();
    }
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
                acts.quantize_for(kind, &x);
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
                    a.quantize_for(kind, xs);
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
    prompts(budget)
}

/// Single tokens against 40 matrices of 8,192 × 2,048 in turn, for each kind: GB/s of weights
/// read, the best of five sweeps.
fn from_memory() -> Result<()> {
    let (rows, cols, n) = (8192, 2048, 40);
    println!("single tokens from memory: {n} matrices of {rows} x {cols}, GB/s");
    for kind in [QKind::Q4_0, QKind::Q4K, QKind::Q5K, QKind::Q6K] {
        let data = blocks(kind, rows, cols);
        let ws = (0..n)
            .map(|_| Packed::from_ggml(kind, rows, cols, &data))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow::anyhow!("{kind:?} does not fit {rows} x {cols}"))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (mut acts, mut out) = (QActs::default(), vec![0f32; rows]);
        acts.quantize_for(kind, &x);
        let mut sweep = || {
            let t = Instant::now();
            for w in &ws {
                kernels::matvec(w, &acts, &mut out);
            }
            t.elapsed()
        };
        sweep();
        let best = (0..5).map(|_| sweep()).min().unwrap_or(Duration::MAX);
        let bytes: usize = ws.iter().map(Packed::bytes).sum();
        println!(
            "{kind:?}: {:.1} GB/s ({} MB{})",
            bytes as f64 / best.as_secs_f64() / 1e9,
            bytes / 1_000_000,
            if ws[0].is_tiled() { ", tiled" } else { "" }
        );
    }
    Ok(())
}

/// `x·Wᵀ` as the model's `dequantized_gemm` runs it: 256 weight rows at a time dequantized
/// to f32, each tile a dense GEMM.
fn dequantized_gemm(w: &Packed, x: &Tensor) -> Result<Tensor> {
    let cols = w.cols();
    let mut tiles = Vec::new();
    let mut start = 0;
    while start < w.rows() {
        let n = 256.min(w.rows() - start);
        let mut t = vec![0f32; n * cols];
        t.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(i, row)| w.dequantize_row(start + i, row));
        let t = Tensor::from_vec(t, (n, cols), &Device::Cpu)?;
        tiles.push(x.matmul(&t.t()?)?);
        start += n;
    }
    Ok(Tensor::cat(&tiles, 1)?)
}

/// Prompt products on a Llama-3.2-1B shape: `kernels::matmat` (activations quantized
/// included) against `dequantized_gemm`, at 16, 64 and 512 rows.
fn prompts(budget: Duration) -> Result<()> {
    println!("\nprompts: matmat vs dequantized_gemm, ms (GFLOP/s)");
    for (rows, cols) in [(2048, 2048), (8192, 2048), (2048, 8192)] {
        for kind in [QKind::Q4_1, QKind::Q8_0, QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let data = blocks(kind, rows, cols);
            let Some(w) = Packed::from_ggml(kind, rows, cols, &data) else {
                anyhow::bail!("{kind:?} does not fit {rows} x {cols}");
            };
            let mut line = format!("{rows} x {cols} {kind:?}:");
            for t in [16, 64, 512] {
                let mut rng = rand::rngs::StdRng::seed_from_u64(3);
                let x: Vec<f32> = (0..t * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let xt = Tensor::from_slice(&x, (t, cols), &Device::Cpu)?;
                let mut acts = vec![QActs::default(); t];
                let mut out = vec![0f32; t * rows];
                let b = if t >= 512 { budget / 2 } else { budget / 4 };
                let ours = best(b, || {
                    acts.par_iter_mut()
                        .zip(x.par_chunks(cols))
                        .for_each(|(a, xs)| a.quantize_for(kind, xs));
                    kernels::matmat(&w, &acts, &mut out);
                });
                let gemm = best(b, || {
                    let _ = dequantized_gemm(&w, &xt).map(|y| y.dims().len());
                });
                let gf = |d: Duration| 2.0 * (t * rows * cols) as f64 / d.as_secs_f64() / 1e9;
                line += &format!(
                    " | {t}: {:.2} ({:.0}) vs {:.2} ({:.0})",
                    ours.as_secs_f64() * 1e3,
                    gf(ours),
                    gemm.as_secs_f64() * 1e3,
                    gf(gemm)
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}
