//! WebSocket URL routing with the seed's routes (`room/` and `group/(?P<groupID>\w+)/$`), for
//! arbitrary UTF-8 paths, as given and percent-decoded (the handshake percent-decodes the path
//! before it routes).
//!
//! Properties: nothing panics; `WsRouter::resolves` agrees with the two patterns tried in order
//! after stripping leading slashes; a matched `groupID` is exactly the text between `group/`
//! and the final `/`, and `GroupName::new` accepts it exactly when it is ASCII and shorter than
//! 100 bytes (the ASCII part of `\w` is all valid group-name characters), otherwise it rejects
//! it (the consumer then closes with 4400) without panicking.

#![no_main]

use channels_fuzz::{seed_patterns, seed_routes};
use channels_layer::GroupName;
use libfuzzer_sys::fuzz_target;

fn check(path: &str) {
    let (room, group) = seed_patterns();
    let stripped = path.trim_start_matches('/');
    let room_match = room.matches(stripped);
    let group_match = group.matches(stripped);
    assert_eq!(
        seed_routes().resolves(path),
        room_match.is_some() || group_match.is_some(),
        "{path:?}"
    );
    if let Some(m) = room_match {
        assert!(m.args.is_empty() && m.kwargs.is_empty(), "{m:?}");
    }
    let Some(m) = group_match else { return };
    assert!(m.args.is_empty(), "{m:?}");
    let id = m
        .kwarg("groupID")
        .expect("the named group always takes part");
    assert_eq!(stripped, format!("group/{id}/"));
    assert!(!id.is_empty());
    match GroupName::new(id) {
        Ok(name) => {
            assert_eq!(name.as_str(), id);
            assert!(id.len() < 100, "{id:?}");
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{id:?}"
            );
        }
        Err(_) => assert!(!id.is_ascii() || id.len() >= 100, "{id:?} refused"),
    }
}

fuzz_target!(|path: &str| {
    check(path);
    if let Ok(decoded) = percent_encoding::percent_decode_str(path).decode_utf8() {
        check(&decoded);
    }
});
