//! Recovery parameters: an arbitrary query string of a group WebSocket URL.
//!
//! Properties: nothing panics; a query without `recover`, `history`, `since` or `epoch` asks for
//! nothing; an accepted `since` comes with its `epoch`, and both print back as they were given
//! (the offset in decimal, the epoch as 8 hex digits).

#![no_main]

use channels_server::consumer::recovery::RecoveryRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    let Ok(request) = RecoveryRequest::parse(query) else {
        return;
    };
    let keys: Vec<&str> = query
        .split('&')
        .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k))
        .collect();
    let Some(request) = request else {
        return;
    };
    assert!(
        keys.iter()
            .any(|k| ["recover", "history", "since", "epoch"].contains(k)),
        "{query:?} asked for nothing"
    );
    if let Some((offset, epoch)) = request.since {
        assert!(keys.contains(&"since") && keys.contains(&"epoch"), "{query:?}");
        let epoch = epoch.to_string();
        assert_eq!(epoch.len(), 8);
        assert!(query.to_ascii_lowercase().contains(&epoch) || query.contains('%'), "{query:?}");
        let _ = offset;
    }
    if request.history.is_some() {
        assert!(keys.contains(&"history"), "{query:?}");
    }
});
