//! `channels-server`: the binary. The framework's command line ([`channels_server::cli::run`])
//! serving the tutorial app ([`channels_server::tutorial`]), exactly as your own binary serves
//! yours.

fn main() -> std::process::ExitCode {
    channels_server::cli::run_with(channels_server::tutorial::app_for)
}
