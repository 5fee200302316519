//! What the speed examples share: their numeric arguments, thread pool, filler data and
//! best-of timing (included with `#[path]`; not an example of its own).

// Each example compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::time::Instant;

/// The command line's arguments as numbers; with fewer than `need`, or one that is not a
/// number, prints `usage` and exits with status 2.
pub fn numbers(usage: &str, need: usize) -> Vec<usize> {
    let args: Result<Vec<usize>, _> = std::env::args().skip(1).map(|s| s.parse()).collect();
    match args {
        Ok(a) if a.len() >= need => a,
        _ => {
            eprintln!("usage: {usage}");
            std::process::exit(2);
        }
    }
}

/// A rayon pool of `threads` threads.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

/// `len` values in −0.5..0.5, spread by a multiplicative hash of the index and `seed`.
pub fn fill(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 2654435761 + seed) % 1000) as f32 - 500.0) / 1000.0)
        .collect()
}

/// The shortest of `repeats` runs of `f`, in seconds.
pub fn best_of(repeats: usize, f: &mut dyn FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..repeats {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}
