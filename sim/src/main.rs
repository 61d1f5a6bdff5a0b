//! `veil-sim --seeds N [--from S]` runs seeds S..S+N; `--seed S` runs one
//! and prints its summary.

use std::process::ExitCode;
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(seed) = arg(&args, "--seed") {
        return match veil_sim::run(seed) {
            Ok(summary) => {
                println!("{summary:?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let count = arg(&args, "--seeds").unwrap_or(1000);
    let from = arg(&args, "--from").unwrap_or(0);
    let started = Instant::now();
    let (ok, failures) = veil_sim::run_many(from, count);
    for failure in &failures {
        eprintln!("{failure}");
    }
    println!(
        "{ok} seeds passed, {} failed, in {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
