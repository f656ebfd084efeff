//! System tests of the workspace, and the load generator the benchmarks use.
//!
//! The tests are this package's `[[test]]` targets. Its binaries: `channels-server-under-test`
//! runs the server's command line for the tests, `channels-loadgen` drives load, and
//! `channels-compose-check` checks the compose stack that `scripts/compose-test.sh` brings up.

pub mod loadgen;
