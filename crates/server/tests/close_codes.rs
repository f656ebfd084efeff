//! The close codes the server sends, the README's table of them, and the pages' reconnect rules
//! (`channels_web::reconnect`) agree: every code the framework or the tutorial sends is in the
//! table, and the table's "reconnect?" is what the pages do.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::collections::BTreeMap;

use channels_server::consumer::Close;
use channels_server::tutorial::INVALID_GROUP;
use channels_web::reconnect::should_reconnect;

/// The README's close-code table: code -> whether the client should reconnect.
fn readme_table() -> BTreeMap<u16, bool> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme
        .find("| code | when | reconnect? |")
        .expect("the close-code table");
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].parse().unwrap(), cells[2].starts_with("yes"))
        })
        .collect()
}

#[test]
fn every_code_sent_is_documented_and_the_pages_follow_the_table() {
    let table = readme_table();
    for close in Close::ALL.iter().chain([&INVALID_GROUP]) {
        let documented = table
            .get(&close.code)
            .unwrap_or_else(|| panic!("{close} is not in README's close-code table"));
        assert_eq!(
            should_reconnect(close.code),
            *documented,
            "{close}: README says reconnect={documented}, the pages do otherwise"
        );
    }
    for (code, reconnect) in &table {
        assert_eq!(
            should_reconnect(*code),
            *reconnect,
            "README's row for {code}"
        );
    }
}
