//! Parsing the Prometheus text of `/metrics`.

use std::collections::HashMap;

/// `name{labels}` -> value for every sample line (comments and blank lines skipped).
pub fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {l:?}"));
            (name.to_owned(), value)
        })
        .collect()
}
