#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
//! Property tests of WebSocket URL routing (reliability-security.md T-F2): any path routes
//! without panicking, and the group chat's route hands the consumer exactly the group id the URL
//! carried. The `routing` cargo-fuzz target in `fuzz/` checks the same with coverage guidance.

use std::sync::LazyLock;

use channels_layer::GroupName;
use channels_server::routing::{RePath, WsRouter};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use proptest::prelude::*;

/// Cases per property: T-F2 asks for at least 10,000 where they are cheap.
const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// Compiled once: compiling a regex per case would cost more than the properties.
/// The seed's routes.
static ROUTES: LazyLock<WsRouter> = LazyLock::new(channels_server::tutorial::routes);
/// The seed's echo route pattern.
static ROOM: LazyLock<RePath> = LazyLock::new(|| RePath::new("room/").unwrap());
/// The seed's group route pattern.
static GROUP: LazyLock<RePath> =
    LazyLock::new(|| RePath::new(r"group/(?P<groupID>\w+)/$").unwrap());

/// Paths made of the pieces routing cares about: slashes, the route words, word and non-word
/// characters (ASCII and not), percent escapes, and the odd control character.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("group".to_owned()),
        Just("room".to_owned()),
        r"[a-zA-Z0-9_]{1,5}",
        r"[-.~%?#* \t\n\x00]",
        r"%[0-9A-Fa-f]{2}",
        r"[éß٣组ǅ_]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Group ids the route captures: one or more `\w` characters, ASCII or not, short and long.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        r"[a-zA-Z0-9_]{1,20}",
        r"[a-zA-Z0-9_]{95,105}",
        r"[a-zA-Z0-9_éß٣组ǅ]{1,20}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_path_routes_without_panicking(
        path in prop_oneof![path_like(), any::<String>()],
        slashes in 0usize..3,
    ) {
        let path = format!("{}{path}", "/".repeat(slashes));
        let resolved = ROUTES.resolves(&path);
        // The router strips leading slashes, then tries the seed's patterns in order.
        let stripped = path.trim_start_matches('/');
        let room = ROOM.matches(stripped);
        let group = GROUP.matches(stripped);
        prop_assert_eq!(resolved, room.is_some() || group.is_some(), "{:?}", path);
        if let Some(group) = group {
            let expected = format!("group/{}/", group.kwarg("groupID").unwrap());
            prop_assert_eq!(stripped, expected);
        }
        // The handshake percent-decodes before routing; undecodable paths are refused (400).
        if let Ok(decoded) = percent_decode_str(&path).decode_utf8() {
            let _ = ROUTES.resolves(&decoded);
        }
    }

    #[test]
    fn group_route_captures_round_trip(id in word(), slashes in 0usize..3) {
        let path = format!("{}group/{id}/", "/".repeat(slashes));
        prop_assert!(ROUTES.resolves(&path));
        let captured = GROUP.matches(path.trim_start_matches('/')).unwrap();
        prop_assert_eq!(captured.kwarg("groupID"), Some(id.as_str()));
        prop_assert!(captured.args.is_empty());
        // The same id, percent-encoded by a browser, decodes to the same capture.
        let encoded = utf8_percent_encode(&id, NON_ALPHANUMERIC).to_string();
        let decoded = percent_decode_str(&encoded).decode_utf8().unwrap();
        let decoded_path = format!("group/{decoded}/");
        let captured = GROUP.matches(&decoded_path).unwrap();
        prop_assert_eq!(captured.kwarg("groupID"), Some(id.as_str()));
        // What the consumer then does: a valid Channels group name exactly when it is ASCII
        // and shorter than 100 bytes (ASCII `\w` characters are all group-name characters);
        // otherwise it closes with 4400.
        prop_assert_eq!(
            GroupName::new(&id).is_ok(),
            id.is_ascii() && id.len() < 100,
            "{:?}", id
        );
    }

    #[test]
    fn group_route_refuses_anything_but_one_word_segment(
        id in word(),
        extra in prop_oneof![Just("/x"), Just("-"), Just("."), Just(" "), Just("/"), Just("\n")],
    ) {
        for path in [
            format!("group/{id}{extra}/"),
            format!("x{id}/group/{id}/"),
            format!("group/{id}"),
        ] {
            prop_assert!(GROUP.matches(&path).is_none(), "{:?} matched", path);
        }
    }
}
