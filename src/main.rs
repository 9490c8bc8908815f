//! The `liveuser` executable: parse the command line and hand it to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = liveuser::cli::Cli::parse();
    match liveuser::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liveuser: {e}");
            ExitCode::FAILURE
        }
    }
}
