//! Channel and group names, differential against the rules Channels documents (ASCII only, as
//! `crates/layer/src/name.rs` explains):
//!
//! * group: `^[a-zA-Z0-9_.-]{1,99}$`;
//! * channel: `^[a-zA-Z0-9_.-]+(![a-zA-Z0-9_.-]*)?$`, shorter than 100 bytes;
//! * a receive name must also end at its `!`, if it has one.
//!
//! Properties: `new` never panics and accepts exactly these; an accepted name reads back as
//! given; the Redis channel of a group (`{prefix}__group__{name}`) starts with the prefix, and
//! holds no glob, hash-tag, `:`, `!` or whitespace character.

#![no_main]

use std::sync::OnceLock;

use channels_layer::redis::group_channel;
use channels_layer::{ChannelName, GroupName};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

fn rules() -> &'static (Regex, Regex) {
    static RULES: OnceLock<(Regex, Regex)> = OnceLock::new();
    RULES.get_or_init(|| {
        (
            Regex::new(r"\A[a-zA-Z0-9_.\-]{1,99}\z").expect("valid"),
            Regex::new(r"\A[a-zA-Z0-9_.\-]+(![a-zA-Z0-9_.\-]*)?\z").expect("valid"),
        )
    })
}

fuzz_target!(|name: &str| {
    let (group_rule, channel_rule) = rules();

    let group_ok = group_rule.is_match(name);
    match GroupName::new(name) {
        Ok(group) => {
            assert!(group_ok, "{name:?} accepted as a group");
            assert_eq!(group.as_str(), name);
            assert_eq!(group.to_string(), name);
            assert!(
                ChannelName::new(name).is_ok(),
                "a group name is a channel name"
            );
            for prefix in ["asgi", "", "my-app.v2_"] {
                let channel = group_channel(prefix, &group);
                assert!(channel.starts_with(prefix));
                assert_eq!(
                    channel.strip_prefix(prefix),
                    Some(format!("__group__{name}").as_str())
                );
                assert!(
                    !channel.contains(|c: char| "*?[]{}:!".contains(c) || c.is_whitespace()),
                    "{channel:?}"
                );
            }
        }
        Err(_) => assert!(!group_ok, "{name:?} refused as a group"),
    }
    assert_eq!(name.parse::<GroupName>().is_ok(), group_ok);

    let channel_ok = name.len() < 100 && channel_rule.is_match(name);
    match ChannelName::new(name) {
        Ok(channel) => {
            assert!(channel_ok, "{name:?} accepted as a channel");
            assert_eq!(channel.as_str(), name);
            assert_eq!(channel.is_process_local(), name.contains('!'));
            assert!(name.starts_with(channel.non_local_name()));
            if channel.is_process_local() {
                assert!(channel.non_local_name().ends_with('!'));
                assert_eq!(channel.non_local_name().matches('!').count(), 1);
            } else {
                assert_eq!(channel.non_local_name(), name);
            }
        }
        Err(_) => assert!(!channel_ok, "{name:?} refused as a channel"),
    }
    let receive_ok = channel_ok && (!name.contains('!') || name.ends_with('!'));
    assert_eq!(
        ChannelName::new_receive(name).is_ok(),
        receive_ok,
        "{name:?}"
    );
});
