//! `opsfleet`: the one binary. It parses the command line, loads the config, and wires the
//! crates together; the work happens in `opsfleet-router`, `opsfleet-worker` and
//! `opsfleet-backend`.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_tracing(&args.log_format, args.command.default_log_level());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("opsfleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("opsfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
