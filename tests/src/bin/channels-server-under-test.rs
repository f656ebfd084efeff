//! The `channels-server` binary's code, built inside this package so that its system tests get
//! a fresh binary (`CARGO_BIN_EXE_channels-server-under-test`) from the same `cargo test` run.

fn main() -> std::process::ExitCode {
    channels_server::cli::run_with(channels_server::tutorial::app_for)
}
