//! The `liveuser` executable: parse the command line and hand it to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    liveuser::app::tune_allocator();
    // Before any thread starts: every file this process creates is private to its user.
    liveuser::store::private::restrict_umask();
    let cli = match liveuser::cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match liveuser::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liveuser: {e}");
            ExitCode::FAILURE
        }
    }
}
