//! `ntpkit simulate` without the rest of the CLI: `cargo run --release -p ntpkit-sim --example
//! simulate -- SCENARIO.toml [options]`.
use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "simulate")]
struct Cli {
    #[command(flatten)]
    args: ntpkit_sim::cli::SimulateArgs,
}

fn main() -> anyhow::Result<ExitCode> {
    ntpkit_sim::cli::run(Cli::parse().args)
}
