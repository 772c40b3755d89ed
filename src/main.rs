//! `nacrithfs`: the command line over the workspace's crates — compress and decompress
//! files, mount a compressing filesystem, pack a corpus, and measure all of it.

mod args;
mod bench;
mod cli;
mod error;
mod nc06_codec;

use clap::Parser;
use cli::{run, Cli};

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(cli.command.default_log_filter()),
    )
    .format_timestamp_millis()
    .init();
    if let Err(e) = run(cli) {
        eprintln!("nacrithfs: {e}");
        std::process::exit(e.exit_code());
    }
}
