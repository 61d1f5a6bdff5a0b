//! How every veil binary ends: the exit status, and on failure one line on
//! stderr.

use std::fmt::Display;
use std::process::ExitCode;

/// The exit status for a command's outcome. An error goes to stderr as
/// `error: ` and its alternate form (for `anyhow`, each cause once, colon
/// separated): its `Debug` form, which `main` returning `Result` would
/// print, adds a backtrace wherever `RUST_BACKTRACE` is set.
pub fn exit_status<E: Display>(outcome: Result<(), E>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
