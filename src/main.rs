use clap::Parser;
use nacrithfs::cli::{run, Cli};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp_millis().init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("nacrithfs: {e}");
        std::process::exit(e.exit_code());
    }
}
