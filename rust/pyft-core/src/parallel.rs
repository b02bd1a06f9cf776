//! Fork-safe data parallelism.
//!
//! Work runs on one process-wide rayon pool (size: `PYFT_NUM_THREADS`, else all cores). A
//! thread pool does not survive `fork()`: PyTorch DataLoader workers fork the process, and a
//! child that touched the parent's pool would hang. The binding registers a fork handler that
//! calls [`mark_forked`]; from then on, in the child, every [`map`] runs sequentially.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

static FORKED: AtomicBool = AtomicBool::new(false);
static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Record that this process is a forked child: parallel work becomes sequential.
pub fn mark_forked() {
    FORKED.store(true, Ordering::SeqCst);
}

/// Whether [`map`] may use threads in this process.
pub fn enabled() -> bool {
    !FORKED.load(Ordering::SeqCst) && num_threads() > 1
}

/// The number of worker threads: `PYFT_NUM_THREADS` when set to a positive integer, else the
/// number of available cores.
pub fn num_threads() -> usize {
    std::env::var("PYFT_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(num_threads())
            .thread_name(|i| format!("pyft-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Map `f` over `items` in order, in parallel when allowed.
pub fn map<T, R, F>(items: &[T], f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync + Send,
{
    match pool() {
        Some(pool) if enabled() && items.len() > 1 => pool.install(|| items.par_iter().map(&f).collect()),
        _ => items.iter().map(f).collect(),
    }
}

/// Run `f` inside the pool (so nested rayon calls use it), or directly when parallelism is off.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(pool) if enabled() => pool.install(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn map_keeps_order() {
        let v: Vec<u32> = (0..1000).collect();
        assert_eq!(super::map(&v, |x| x * 2), v.iter().map(|x| x * 2).collect::<Vec<_>>());
    }
}
