//! schemathesis (pinned in tests/python/requirements.txt) runs every operation of the server
//! API's OpenAPI document, served at `/api/openapi.json`, against a replica with presence,
//! history and the API on one redis-server: generated valid and invalid requests, every check
//! (status codes, content types and bodies as documented, invalid input refused, the key
//! required). A failure prints schemathesis' report with the curl line that reproduces it.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[path = "support/python.rs"]
mod python;
#[path = "support/replica.rs"]
mod replica;

use std::time::Duration;

use replica::Replica;
use test_support::free_port;
use test_support::redis_server::RedisServer;

const KEY: &str = "schema-test-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_api() {
    let redis = RedisServer::start();
    let url = redis.url();
    let api = free_port();
    let api_bind = format!("127.0.0.1:{api}");
    let _replica = Replica::start(
        "schema",
        &[
            "--redis-url",
            url.as_str(),
            "--presence",
            "--history-size",
            "10",
            "--api-bind",
            api_bind.as_str(),
        ],
        &[("CHANNELS_API_KEY", KEY)],
    )
    .await;
    let schemathesis = python::venv_program("schemathesis");
    let mut cmd = tokio::process::Command::new(&schemathesis);
    cmd.arg("run")
        .arg(format!("http://{api_bind}/api/openapi.json"))
        .args(["--header", &format!("X-API-Key: {KEY}")])
        .args(["--checks", "all", "--max-examples", "60", "--workers", "1"])
        .args(["--request-timeout", "5", "--no-color"])
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("schemathesis took more than 10 minutes")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", schemathesis.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{report}");
    // Every operation was tested, not skipped for want of a schema it could read.
    assert!(
        report.contains("Tested: 5"),
        "not every operation ran:\n{report}"
    );
}
