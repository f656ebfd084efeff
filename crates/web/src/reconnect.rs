//! The pages' reconnect policy, as numbers the Rust side can read.
//!
//! `static/chat.js` implements the policy; these constants document it, and a unit test checks
//! that the script declares exactly these values, so the two cannot drift apart.
//!
//! - **When:** after a close whose code is in [`RECONNECT_CODES`]; any other code is final
//!   (1000 normal, e.g. the echo chat's `exit`; 1003; 1008; 1009; 4400 invalid group name). The
//!   close button stops reconnecting for good.
//! - **How long:** exponential backoff with *full jitter*: retry number `n` (1, 2, 3, …) waits
//!   `random(0, min(CAP_MS, BASE_MS × 2ⁿ))` ms, that is up to 1 s, 2 s, 4 s, 8 s, then up to
//!   15 s. Full jitter spreads a mass disconnect evenly over the window instead of bringing
//!   every client back in lockstep (reliability-security.md §5 and R-07; phoenix.js, which has
//!   no jitter, is the counter-example).
//! - **Drains:** after [`DRAIN_CODES`] (1001, 1012: the server is going away on purpose and other
//!   replicas are up; 4010: a message was missed and the page recovers it) the first retry
//!   waits only `random(0, BASE_MS)`.
//! - **Reset:** the retry number starts again at 1 once a connection has stayed open for
//!   [`STABLE_MS`]. A mere successful open does not reset it, so a server that accepts and then
//!   closes at once (1011, or 1013 when the group cannot be joined) still sees growing delays.
//! - **Rejoin:** a retry opens the same path, and the server joins the group named in the path on
//!   every connect, so the group page rejoins its group.

/// The base of the exponential backoff, in milliseconds.
pub const BASE_MS: u32 = 500;

/// The largest ceiling of a retry delay, in milliseconds.
pub const CAP_MS: u32 = 15_000;

/// How long a connection must stay open before the retry number resets, in milliseconds.
pub const STABLE_MS: u32 = 5_000;

/// The close codes after which the pages reconnect: 1001 going away (shutdown, drain), 1006
/// abnormal closure (no close frame: a killed replica, a refused connection), 1011 internal
/// error, 1012 service restart, 1013 try again later (the channel layer is unavailable), 4008
/// slow consumer, 4009 no pong (the server thought the connection dead), 4010 missed messages
/// (history on: the page resumes from its latest position) and 4401 token expired (the pages
/// fetch a new token first).
pub const RECONNECT_CODES: [u16; 9] = [1001, 1006, 1011, 1012, 1013, 4008, 4009, 4010, 4401];

/// The close codes of a deliberate close with other replicas (or the same one) ready, after
/// which the first retry is almost immediate: a drain (1001, 1012), or a missed message to
/// recover (4010).
pub const DRAIN_CODES: [u16; 3] = [1001, 1012, 4010];

/// Whether the pages reconnect after a close with `code`.
///
/// ```
/// use channels_web::reconnect::should_reconnect;
/// assert!(should_reconnect(1001));
/// assert!(!should_reconnect(1000));
/// ```
pub fn should_reconnect(code: u16) -> bool {
    RECONNECT_CODES.contains(&code)
}

/// The ceiling of the delay before retry number `attempt` (1 for the first) after a close with
/// `code`, in milliseconds; the pages wait a uniformly random time in `[0, ceiling)`.
///
/// ```
/// use channels_web::reconnect::delay_ceiling_ms;
/// assert_eq!(delay_ceiling_ms(1, 1006), 1_000);
/// assert_eq!(delay_ceiling_ms(1, 1001), 500);
/// assert_eq!(delay_ceiling_ms(3, 1013), 4_000);
/// assert_eq!(delay_ceiling_ms(40, 1006), 15_000);
/// ```
pub fn delay_ceiling_ms(attempt: u32, code: u16) -> u32 {
    let attempt = attempt.max(1);
    if attempt == 1 && DRAIN_CODES.contains(&code) {
        return BASE_MS;
    }
    let factor = 1_u32.checked_shl(attempt).unwrap_or(u32::MAX);
    BASE_MS.saturating_mul(factor).min(CAP_MS)
}
