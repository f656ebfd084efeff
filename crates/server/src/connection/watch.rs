//! Per-connection rules on the client's side of the conversation: its message rate, and whether
//! it is still there (server pings).

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket over the frames a client sends: `per_second` tokens a second, up to twice
/// that in reserve; each frame takes one. A client over its rate is closed with
/// [`Close::RATE_LIMIT`](crate::consumer::Close::RATE_LIMIT) (1008).
#[derive(Debug)]
pub(super) struct RateLimit {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket; `per_second` 0 allows everything.
    pub(super) fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second);
        Self {
            per_second,
            burst: 2.0 * per_second,
            tokens: 2.0 * per_second,
            last: now,
        }
    }

    /// Takes a frame's token; `false` when the client is over its rate.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the keepalive asks for at a timer tick.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Liveness {
    /// Nothing to do.
    Fine,
    /// The client has been silent for the ping interval: send a ping.
    Ping,
    /// A ping got no answer within the pong timeout: close with
    /// [`Close::NO_PONG`](crate::consumer::Close::NO_PONG) (4009).
    Dead,
}

/// Server pings: a connection from which nothing has arrived for `interval` gets a ping, and
/// anything from the client (the pong, or any other frame) within `timeout` proves it alive.
///
/// It needs no timer reset per frame: frames only record the time they arrived, and the check
/// (at most one per interval, plus one per ping) works out the next time from that.
#[derive(Debug)]
pub(super) struct Keepalive {
    interval: Option<Duration>,
    timeout: Duration,
    last_seen: Instant,
    ping_sent: Option<Instant>,
    check_at: Option<Instant>,
}

impl Keepalive {
    /// `interval` `None`: no pings.
    pub(super) fn new(interval: Option<Duration>, timeout: Duration, now: Instant) -> Self {
        Self {
            interval,
            timeout,
            last_seen: now,
            ping_sent: None,
            check_at: interval.map(|i| now + i),
        }
    }

    /// Something arrived from the client.
    pub(super) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// When [`check`](Self::check) should be called next.
    pub(super) fn check_at(&self) -> Option<Instant> {
        self.check_at
    }

    /// At a timer tick: whether to ping, or whether the client is gone.
    pub(super) fn check(&mut self, now: Instant) -> Liveness {
        let Some(interval) = self.interval else {
            return Liveness::Fine;
        };
        if self.check_at.is_none_or(|at| at > now) {
            return Liveness::Fine;
        }
        if let Some(sent) = self.ping_sent {
            if self.last_seen < sent {
                if now >= sent + self.timeout {
                    return Liveness::Dead;
                }
                self.check_at = Some(sent + self.timeout);
                return Liveness::Fine;
            }
            // Answered.
            self.ping_sent = None;
        }
        let due = self.last_seen + interval;
        if due <= now {
            self.ping_sent = Some(now);
            self.check_at = Some(now + self.timeout);
            Liveness::Ping
        } else {
            self.check_at = Some(due);
            Liveness::Fine
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(20, t0);
        assert_eq!((0..40).filter(|_| rate.take(t0)).count(), 40, "burst of 2x");
        assert!(!rate.take(t0));
        // A second later: 20 more, not 40.
        let t1 = t0 + S;
        assert_eq!((0..40).filter(|_| rate.take(t1)).count(), 20);
        // At the rate, forever.
        let mut t = t1;
        for _ in 0..200 {
            t += Duration::from_millis(50);
            assert!(rate.take(t));
        }
        let mut free = RateLimit::new(0, t0);
        assert!((0..10_000).all(|_| free.take(t0)));
    }

    #[test]
    fn a_silent_client_is_pinged_then_declared_dead() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Some(25 * S), 10 * S, t0);
        assert_eq!(k.check_at(), Some(t0 + 25 * S));
        assert_eq!(k.check(t0 + 24 * S), Liveness::Fine, "not due yet");
        assert_eq!(k.check(t0 + 25 * S), Liveness::Ping);
        assert_eq!(k.check_at(), Some(t0 + 35 * S));
        assert_eq!(k.check(t0 + 35 * S), Liveness::Dead);
    }

    #[test]
    fn any_frame_answers_and_activity_postpones_the_ping() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Some(25 * S), 10 * S, t0);
        k.seen(t0 + 20 * S);
        assert_eq!(k.check(t0 + 25 * S), Liveness::Fine);
        assert_eq!(k.check_at(), Some(t0 + 45 * S), "25 s after the last frame");
        assert_eq!(k.check(t0 + 45 * S), Liveness::Ping);
        k.seen(t0 + 46 * S);
        assert_eq!(k.check(t0 + 55 * S), Liveness::Fine, "the pong came");
        assert_eq!(k.check_at(), Some(t0 + 71 * S));
        let mut off = Keepalive::new(None, 10 * S, t0);
        assert_eq!(off.check_at(), None);
        assert_eq!(off.check(t0 + 1000 * S), Liveness::Fine);
    }
}
