//! A per-operation timer for the native training step: with `ATTN_PROFILE=1`, every
//! kernel call of the step adds its wall time to a table by name, which
//! `attn bench train` prints. Off, it costs one relaxed load per call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static TABLE: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());
static ON: AtomicBool = AtomicBool::new(false);

/// Whether timing is on (`ATTN_PROFILE` set to anything but `0`, or [`set_enabled`]).
pub fn enabled() -> bool {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if std::env::var("ATTN_PROFILE").is_ok_and(|v| v != "0") {
            ON.store(true, Ordering::Relaxed);
        }
    });
    ON.load(Ordering::Relaxed)
}

pub fn set_enabled(on: bool) {
    enabled();
    ON.store(on, Ordering::Relaxed);
}

/// Run `f`, adding its time to `name` when timing is on.
#[inline]
pub fn time<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    let dt = t0.elapsed().as_secs_f64();
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    match t.iter_mut().find(|e| e.0 == name) {
        Some(e) => {
            e.1 += dt;
            e.2 += 1;
        }
        None => t.push((name, dt, 1)),
    }
    r
}

/// The table so far: name, total seconds, calls, in first-call order.
pub fn report() -> Vec<(&'static str, f64, u64)> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub fn reset() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
