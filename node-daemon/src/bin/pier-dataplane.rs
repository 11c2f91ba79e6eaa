//! `pier-dataplane`: the `pier dataplane` subcommand as a binary of this crate alone.
//!
//! The kernel tests of pier-node spawn it (and kill it half-way) as a child process; the root
//! package's `pier` binary is not visible to a member crate's tests.

use std::process::ExitCode;

use clap::Parser;
use pier_node::cli::{DataplaneArgs, run};
use pier_runtime::error_chain as chain;

#[derive(Debug, Parser)]
#[command(
    name = "pier-dataplane",
    about = "Pier's node dataplane from a NodeState file"
)]
struct Cli {
    #[command(flatten)]
    args: DataplaneArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pier-dataplane: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}
