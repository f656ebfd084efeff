//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use std::sync::OnceLock;
use std::time::Duration;

use channels_layer::redis::fernet::Fernet;
use channels_layer::{Map, Message, Value};
use channels_server::routing::{RePath, WsRouter};

/// The keys of the Fernet targets. `a-test-key` made the seed tokens (the same vectors as the
/// unit tests in `crates/layer/src/redis/fernet.rs`); the second key exercises the key loop.
pub const FERNET_KEYS: [&str; 2] = ["a-test-key", "another-key"];

/// The core layer's token age limit (`expiry + 10 s`).
pub const CORE_TTL: Duration = Duration::from_secs(70);

/// The clock of the Fernet targets: 10 s after the seed tokens were made.
pub const NOW: u64 = 1_700_000_010;

/// A Fernet with [`FERNET_KEYS`], built once.
pub fn fernet() -> &'static Fernet {
    static FERNET: OnceLock<Fernet> = OnceLock::new();
    FERNET.get_or_init(|| Fernet::new(FERNET_KEYS).expect("two keys"))
}

/// The seed's WebSocket routes, built once.
pub fn seed_routes() -> &'static WsRouter {
    static ROUTES: OnceLock<WsRouter> = OnceLock::new();
    ROUTES.get_or_init(channels_server::tutorial::routes)
}

/// The seed's two patterns, compiled once, in the order `chat::routes` tries them.
pub fn seed_patterns() -> &'static (RePath, RePath) {
    static PATTERNS: OnceLock<(RePath, RePath)> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        (
            RePath::new("room/").expect("valid"),
            RePath::new(r"group/(?P<groupID>\w+)/$").expect("valid"),
        )
    })
}

/// Structural equality where a float equals itself bit for bit, so that a NaN read from the
/// wire compares equal to the same NaN after a round trip (`Value`'s `PartialEq` follows IEEE,
/// where NaN != NaN).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(xs), Value::List(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_value(x, y))
        }
        (Value::Map(x), Value::Map(y)) => same_map(x, y),
        _ => a == b,
    }
}

/// [`same_value`] for maps: same keys in the same order, with the same values.
pub fn same_map(a: &Map, b: &Map) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

/// [`same_value`] for messages.
pub fn same_message(a: &Message, b: &Message) -> bool {
    same_map(a.map(), b.map())
}

/// What a consumer does with a layer message before it reaches user code: look at its type and
/// derive the handler name (Channels' `get_handler_name`). Neither may panic.
pub fn dispatch(msg: &Message) {
    if let Ok(name) = msg.handler_name() {
        assert!(!name.starts_with('_'), "handler {name:?} starts with _");
        assert!(!name.contains('.'), "handler {name:?} kept a dot");
    }
    let _ = msg.message_type();
}
