//! Boolean flags given as environment variables take the usual spellings (`1`, `true`, `yes`,
//! `on` and their opposites), as the README writes them (`CHANNELS_PRESENCE=1`), and a typo is
//! refused with clap's error instead of being read as on or off.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::process::Command;

/// Runs `channels-server --healthcheck` (which parses the whole configuration, then checks a
/// port nothing listens on) with `var=value`: its exit code and stderr.
fn parse_with(var: &str, value: &str) -> (i32, String) {
    let port = test_support::free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_channels-server"))
        .args(["--healthcheck", "--bind", &format!("127.0.0.1:{port}")])
        .env(var, value)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn boolean_variables_take_the_usual_spellings() {
    for var in [
        "CHANNELS_PRESENCE",
        "CHANNELS_REDIS_TLS_INSECURE_SKIP_VERIFY",
        "CHANNELS_DIRECT_DELIVERY",
    ] {
        for value in ["1", "true", "yes", "on", "0", "false", "no", "off"] {
            let (code, stderr) = parse_with(var, value);
            // 1: parsed, and the health check found nothing listening.
            assert_eq!(code, 1, "{var}={value}: {stderr}");
            assert!(!stderr.contains("invalid value"), "{var}={value}: {stderr}");
        }
        let (code, stderr) = parse_with(var, "maybe");
        assert_eq!(code, 2, "{var}=maybe: {stderr}");
        assert!(
            stderr.contains("invalid value 'maybe'"),
            "{var}=maybe: {stderr}"
        );
    }
}
