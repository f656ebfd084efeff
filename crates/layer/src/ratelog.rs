//! Log lines that someone outside the process can trigger (a client, another process on the
//! same Redis), limited in rate so that they cannot flood the logs.
//!
//! Each call site of [`log_limited!`](crate::log_limited) gets its own budget: the first
//! [`LINES_PER_WINDOW`] lines of every [`WINDOW`] are written, the rest are counted and dropped,
//! and the next line written says how many were dropped before it (its `suppressed` field).
//! What such a line reports should also be counted in a metric, which is never rate-limited.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines one call site writes per window at most.
pub const LINES_PER_WINDOW: u64 = 10;
/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The budget of one call site. `log_limited!` makes one `static` per call site.
#[derive(Debug)]
pub struct LogLimit {
    /// The window now counted (milliseconds since the first use of any limit, / window).
    window: AtomicU64,
    /// Lines asked for in this window.
    count: AtomicU64,
    /// Lines dropped since the last one written.
    suppressed: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimit {
    /// A fresh budget.
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the number of lines dropped since the
    /// last one written, or `None` when this one is to be dropped (and is counted).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(current_window())
    }

    fn allow_at(&self, window: u64) -> Option<u64> {
        let seen = self.window.load(Ordering::Relaxed);
        if window != seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The number of the current window (1 for the first: 0 means "never used").
fn current_window() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    ms / u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX) + 1
}

/// A `tracing` event at `$level` (`warn`, `info`, ...) through this call site's [`LogLimit`]:
/// at most [`LINES_PER_WINDOW`] lines per [`WINDOW`], each with a `suppressed` field counting
/// the lines dropped before it. Takes the same fields and message as `tracing::warn!`.
///
/// ```
/// let error = "not msgpack";
/// channels_layer::log_limited!(warn, %error, "undecodable message dropped");
/// ```
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($rest:tt)+) => {{
        static LIMIT: $crate::ratelog::LogLimit = $crate::ratelog::LogLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            ::tracing::$level!(suppressed, $($rest)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_lines_a_window_then_the_count_of_the_dropped_ones() {
        let limit = LogLimit::new();
        let written: Vec<_> = (0..1000).filter_map(|_| limit.allow_at(1)).collect();
        assert_eq!(written, vec![0; LINES_PER_WINDOW as usize]);
        // The next window: the first line reports the 990 dropped lines.
        assert_eq!(limit.allow_at(2), Some(990));
        assert_eq!(limit.allow_at(2), Some(0));
    }
}
