//! Connect-hook answers: arbitrary bytes as the body of a `200`.
//!
//! Properties: nothing panics; an accepted answer is a JSON object of at most 64 KiB with a
//! non-empty string `user`, no key besides `user`, `name`, `groups` and `info`, and the identity
//! it gives has that user and allows exactly the listed groups.

#![no_main]

use channels_server::identity::{HookResponse, MAX_ANSWER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(answer) = HookResponse::parse(body) else {
        return;
    };
    assert!(body.len() <= MAX_ANSWER_BYTES);
    let json: serde_json::Value = serde_json::from_slice(body).expect("accepted answers are JSON");
    let object = json.as_object().expect("an object");
    assert!(object.keys().all(|k| ["user", "name", "groups", "info"].contains(&k.as_str())));
    let user = object["user"].as_str().expect("a string user");
    assert!(!user.is_empty());
    let groups = answer.groups.clone();
    let identity = answer.into_identity();
    assert_eq!(identity.user(), user);
    for group in &groups {
        if !group.ends_with('*') {
            assert!(identity.groups().allows(group), "{group:?}");
        }
    }
});
