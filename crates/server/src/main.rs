//! `channels-server`: the binary. Everything it does is in [`channels_server::cli::main`].

fn main() -> std::process::ExitCode {
    channels_server::cli::main()
}
