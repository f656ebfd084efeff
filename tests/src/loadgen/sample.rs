//! Latency histograms and process CPU/memory readings from `/proc`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

const SHARDS: usize = 16;

/// A latency recorder shared by many tasks: sharded HDR histograms in microseconds (1 µs to
/// 60 s, 3 significant digits).
pub(crate) struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
    next: AtomicUsize,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(
                        Histogram::new_with_bounds(1, 60_000_000, 3)
                            .expect("static histogram bounds are valid"),
                    )
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let micros = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000);
        let mut h = self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Clamped into the bounds, so recording cannot fail.
        let _ = h.record(micros);
    }

    pub(crate) fn latency_ms(&self) -> Latency {
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("static histogram bounds are valid");
        for shard in &self.shards {
            let h = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = all.add(&*h);
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: all.len(),
            p50: ms(all.value_at_quantile(0.50)),
            p99: ms(all.value_at_quantile(0.99)),
            p999: ms(all.value_at_quantile(0.999)),
            max: ms(all.max()),
            mean: all.mean() / 1000.0,
        }
    }
}

/// CPU and memory of one process over a measured interval.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// The process id.
    pub pid: u32,
    /// CPU share over the interval (100 = one core).
    pub cpu_percent: f64,
    /// Resident memory at the end, KiB.
    pub rss_kib: u64,
}

/// CPU times at the start of an interval.
#[derive(Debug, Clone)]
pub struct CpuSample {
    own: f64,
    others: Vec<f64>,
}

impl CpuSample {
    /// Reads this process's and `pids`' CPU seconds now.
    pub fn take(pids: &[u32]) -> Self {
        Self {
            own: cpu_seconds("self"),
            others: pids.iter().map(|p| cpu_seconds(&p.to_string())).collect(),
        }
    }

    /// CPU shares since `take`: this process's, and each of `pids`' with its memory.
    pub fn finish(&self, pids: &[u32], elapsed: Duration) -> (f64, Vec<ProcessReport>) {
        let wall = elapsed.as_secs_f64().max(1e-9);
        let own = (cpu_seconds("self") - self.own) / wall * 100.0;
        let others = pids
            .iter()
            .zip(&self.others)
            .map(|(pid, start)| ProcessReport {
                pid: *pid,
                cpu_percent: (cpu_seconds(&pid.to_string()) - start) / wall * 100.0,
                rss_kib: rss_kib(*pid),
            })
            .collect();
        (own, others)
    }
}

/// user + system CPU seconds of `/proc/<pid>` (`self` for this process), 0 if unreadable.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `VmRSS` of a process in KiB, 0 if unreadable.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
