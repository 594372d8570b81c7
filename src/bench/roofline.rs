//! The memory roofline (`bench --roofline`): how fast the decoder's threads can stream memory
//! on this machine, measured in the bench's own process. A decoded token reads every weight
//! once, so that rate over the bytes a token reads ([`Model::token_bytes`] plus the cache's)
//! is the fastest decode the machine allows, whatever the code.
//!
//! [`Model::token_bytes`]: crate::model::Model::token_bytes

use std::time::Instant;

/// Bytes streamed per pass: far beyond any CPU cache.
pub const PROBE_BYTES: usize = 512 << 20;
/// Passes over the buffer; the fastest counts, as STREAM reports its best.
pub const PASSES: usize = 12;

/// The fastest rate, in bytes per second, at which `threads` threads sum a buffer of about
/// `bytes` bytes, each its own contiguous share: the best of `passes` passes.
pub fn read_rate(threads: usize, bytes: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let words = (bytes / 8).max(threads * 8);
    // Written once, so every page is backed before the first pass.
    let buf: Vec<u64> = (0..words as u64).collect();
    let share = words.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let total = std::thread::scope(|s| {
            let parts: Vec<_> = buf.chunks(share).map(|c| s.spawn(move || sum(c))).collect();
            parts
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        let secs = t0.elapsed().as_secs_f64();
        if secs > 0.0 {
            best = best.max((words * 8) as f64 / secs);
        }
    }
    best
}

/// The wrapping sum of `xs`, eight lanes at a time (the compiler's vector adds).
fn sum(xs: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in chunks.by_ref() {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*x);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, x| a.wrapping_add(*x));
    acc.iter().fold(tail, |a, x| a.wrapping_add(*x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_counts_every_word_once() {
        for n in [0u64, 1, 7, 8, 9, 1000, 1003] {
            let xs: Vec<u64> = (1..=n).collect();
            assert_eq!(sum(&xs), n * (n + 1) / 2, "n = {n}");
        }
        assert_eq!(sum(&[u64::MAX, 2]), 1);
    }

    #[test]
    fn a_read_rate_is_measured_for_any_thread_count() {
        for threads in [0, 1, 2, 3] {
            let r = read_rate(threads, 4 << 20, 2);
            // Finite and positive; at least 100 MB/s on any machine that runs the tests.
            assert!(r.is_finite() && r > 1e8, "{threads} threads: {r}");
        }
    }
}
