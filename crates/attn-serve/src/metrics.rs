//! Counters and histograms, rendered in Prometheus' text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct Histogram {
    bounds: Vec<f64>,
    /// Non-cumulative counts, one per bound plus the overflow bucket.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    finished: Mutex<BTreeMap<&'static str, u64>>,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Requests accepted but not yet running (the bounded queue).
    pub queue_depth: AtomicUsize,
    /// Sequences being decoded.
    pub active: AtomicUsize,
    ttft: Mutex<Histogram>,
    per_token: Mutex<Histogram>,
    batch: Mutex<Histogram>,
    pub started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            finished: Mutex::default(),
            tokens_generated: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            ttft: Mutex::new(Histogram::new(LATENCY_BOUNDS)),
            per_token: Mutex::new(Histogram::new(LATENCY_BOUNDS)),
            batch: Mutex::new(Histogram::new(BATCH_BOUNDS)),
            started: std::time::Instant::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere never leaves these maps half-updated; keep counting.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        *lock(&self.requests)
            .entry((endpoint.to_string(), status))
            .or_insert(0) += 1;
    }

    /// A generation ended: `stop`, `length`, `client_disconnected`, `timeout`, `error`.
    pub fn finished(&self, reason: &'static str) {
        *lock(&self.finished).entry(reason).or_insert(0) += 1;
    }

    pub fn finished_count(&self, reason: &str) -> u64 {
        lock(&self.finished).get(reason).copied().unwrap_or(0)
    }

    pub fn ttft(&self, secs: f64) {
        lock(&self.ttft).observe(secs);
    }

    pub fn per_token(&self, secs: f64) {
        lock(&self.per_token).observe(secs);
    }

    pub fn batch(&self, size: usize) {
        lock(&self.batch).observe(size as f64);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP attn_requests_total HTTP requests by endpoint and status.\n# TYPE attn_requests_total counter\n");
        for ((ep, st), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                s,
                "attn_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
            );
        }
        s.push_str("# HELP attn_generations_total Generations that ended, by reason.\n# TYPE attn_generations_total counter\n");
        for reason in ["stop", "length", "client_disconnected", "timeout", "error"] {
            let n = self.finished_count(reason);
            let _ = writeln!(s, "attn_generations_total{{reason=\"{reason}\"}} {n}");
        }
        let counters = [
            (
                "attn_tokens_generated_total",
                "Tokens generated.",
                self.tokens_generated.load(Ordering::Relaxed),
            ),
            (
                "attn_prompt_tokens_total",
                "Prompt tokens processed.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            (
                "attn_queue_depth",
                "Requests waiting for a decoding slot.",
                self.queue_depth.load(Ordering::Relaxed) as u64,
            ),
            (
                "attn_active_sequences",
                "Sequences being decoded.",
                self.active.load(Ordering::Relaxed) as u64,
            ),
            (
                "process_resident_memory_bytes",
                "Resident set size.",
                rss_bytes().0,
            ),
            (
                "attn_process_peak_resident_memory_bytes",
                "Peak resident set size (VmHWM).",
                rss_bytes().1,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP process_uptime_seconds Seconds since the server started.\n# TYPE process_uptime_seconds gauge\nprocess_uptime_seconds {:.3}",
            self.started.elapsed().as_secs_f64()
        );
        lock(&self.ttft).render(
            &mut s,
            "attn_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
        );
        lock(&self.per_token).render(
            &mut s,
            "attn_time_per_output_token_seconds",
            "Between consecutive tokens of one generation.",
        );
        lock(&self.batch).render(
            &mut s,
            "attn_decode_batch_size",
            "Sequences per decode step.",
        );
        s
    }
}

/// Current and peak resident set size in bytes, from /proc/self/status (0 elsewhere).
pub fn rss_bytes() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let field = |key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
