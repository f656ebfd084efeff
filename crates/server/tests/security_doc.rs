//! SECURITY.md and README.md state the limits the code enforces: their tables are compared with
//! `Config::default()` and with the flags' own defaults and environment variables.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::path::Path;

use channels_server::Config;
use clap::CommandFactory;

/// `Config::default()`'s value for each limit flag.
fn code_default(flag: &str) -> Option<String> {
    let c = Config::default();
    Some(match flag {
        "--max-message-size" => c.max_message_size.to_string(),
        "--max-messages-per-second" => c.max_messages_per_second.to_string(),
        "--max-connections" => c.max_connections.to_string(),
        "--max-connections-per-ip" => c.max_connections_per_ip.to_string(),
        "--max-http-connections" => c.max_http_connections.to_string(),
        "--max-http-connections-per-ip" => c.max_http_connections_per_ip.to_string(),
        "--handshake-timeout-secs" => c.handshake_timeout_secs.to_string(),
        "--ping-interval-secs" => c.ping_interval_secs.to_string(),
        "--pong-timeout-secs" => c.pong_timeout_secs.to_string(),
        "--max-queued-bytes" => c.max_queued_bytes.to_string(),
        "--write-timeout-secs" => c.write_timeout_secs.to_string(),
        "--capacity" => c.capacity.to_string(),
        "--drain-timeout-secs" => c.drain_timeout_secs.to_string(),
        "--drain-batch" => c.drain_batch.to_string(),
        "--connect-hook-timeout-ms" => c.connect_hook_timeout_ms.to_string(),
        "--connect-hook-max-in-flight" => c.connect_hook_max_in_flight.to_string(),
        _ => return None,
    })
}

const LIMIT_FLAGS: [&str; 16] = [
    "--max-message-size",
    "--max-messages-per-second",
    "--max-connections",
    "--max-connections-per-ip",
    "--max-http-connections",
    "--max-http-connections-per-ip",
    "--handshake-timeout-secs",
    "--ping-interval-secs",
    "--pong-timeout-secs",
    "--max-queued-bytes",
    "--write-timeout-secs",
    "--capacity",
    "--drain-timeout-secs",
    "--drain-batch",
    "--connect-hook-timeout-ms",
    "--connect-hook-max-in-flight",
];

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cells of the Markdown table rows in `text` that name a flag.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|') && l.contains("`--"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// `` `--flag VALUE` `` → `--flag`.
fn flag_of(cell: &str) -> String {
    cell.trim_matches('`')
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The flag's environment variable and default value, as clap knows them.
fn clap_arg(flag: &str) -> (String, String) {
    let command = Config::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == flag.strip_prefix("--"))
        .unwrap_or_else(|| panic!("{flag} is not a flag"));
    let env = arg.get_env().unwrap().to_string_lossy().into_owned();
    let default = arg.get_default_values()[0].to_string_lossy().into_owned();
    (env, default)
}

#[test]
fn security_md_states_the_code_defaults() {
    let text = read("SECURITY.md");
    let limits = text
        .split("\n## Limits\n")
        .nth(1)
        .expect("SECURITY.md has a Limits section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut seen = BTreeMap::new();
    for cells in rows(limits) {
        // | limit | flag | environment | default | past the limit |
        let flag = flag_of(&cells[1]);
        let env = cells[2].trim_matches('`');
        let default = &cells[3];
        let code = code_default(&flag).unwrap_or_else(|| panic!("unknown limit flag {flag}"));
        assert_eq!(default, &code, "SECURITY.md default of {flag}");
        let (clap_env, clap_default) = clap_arg(&flag);
        assert_eq!(env, clap_env, "SECURITY.md environment variable of {flag}");
        assert_eq!(
            clap_default, code,
            "{flag}: the flag's default and Config::default()"
        );
        seen.insert(flag, ());
    }
    for flag in LIMIT_FLAGS {
        assert!(seen.contains_key(flag), "SECURITY.md's table lacks {flag}");
    }
    // The derived numbers quoted in the text.
    let c = Config::default();
    assert!(limits.contains(&format!(
        "burst of twice the rate ({})",
        2 * c.max_messages_per_second
    )));
    assert!(limits.contains(&format!(
        "({} s by default)",
        c.ping_interval_secs + c.pong_timeout_secs
    )));
}

#[test]
fn readme_configuration_table_matches_the_flags() {
    let text = read("README.md");
    let table = text
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README.md has a Configuration section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut seen = BTreeMap::new();
    for cells in rows(table) {
        // | flag | environment | default | meaning |
        let flag = flag_of(&cells[0]);
        if let Some(code) = code_default(&flag) {
            let (clap_env, _) = clap_arg(&flag);
            assert_eq!(
                cells[1].trim_matches('`'),
                clap_env,
                "README environment of {flag}"
            );
            assert_eq!(cells[2].trim_matches('`'), code, "README default of {flag}");
            seen.insert(flag, ());
        }
    }
    for flag in LIMIT_FLAGS {
        assert!(
            seen.contains_key(flag),
            "README's configuration table lacks {flag}"
        );
    }
    assert!(
        table.contains("`--allowed-origins LIST` | `CHANNELS_ALLOWED_ORIGINS`"),
        "README lacks --allowed-origins"
    );
}
