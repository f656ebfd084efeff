//! What a Redis server sends the pub/sub subscriber's own connection, read by
//! `channels_layer::redis::resp::next`.
//!
//! Properties: never panics; a value it finds takes at least one byte and no more than it was
//! given; the same bytes alone give the same value, every shorter prefix asks for more (no
//! value is taken as complete early), and bytes after it change nothing; a push's parts lie
//! inside the value.

#![no_main]

use channels_layer::redis::resp::{Item, next};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((item, used))) = next(data) else {
        return;
    };
    assert!(0 < used && used <= data.len(), "took {used} of {} bytes", data.len());
    let value = &data[..used];
    assert_eq!(next(value), Ok(Some((item, used))), "the value alone reads differently");
    let mut longer = value.to_vec();
    longer.extend_from_slice(b"+OK\r\n");
    assert_eq!(next(&longer), Ok(Some((item, used))), "what follows changed the value");
    // Every prefix asks for more (the longest few, and a spread of the rest, for long values).
    let step = (used / 64).max(1);
    for cut in (0..used).step_by(step).chain(used.saturating_sub(8)..used) {
        assert_eq!(next(&value[..cut]), Ok(None), "complete after {cut} of {used} bytes");
    }
    if let Item::Push { parts, len } = item {
        let range = value.as_ptr_range();
        for part in parts.iter().take(len).filter(|p| !p.is_empty()) {
            let inside = range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end;
            assert!(inside, "a push's part lies outside its value");
        }
    }
});
