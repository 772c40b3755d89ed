//! `nacrithfs`: the command line over the workspace's crates — compress and decompress
//! files, mount a compressing filesystem, pack a corpus, and measure all of it.

mod args;
mod bench;
mod cli;
mod error;
mod file_io;
mod mount_cmd;

use clap::{CommandFactory, Parser};
use cli::{run, Cli};
use std::ffi::OsString;

fn main() {
    // A command whose output goes to a pipe that closes early (`info | head`) ends
    // quietly, as other tools do, instead of panicking in `println!`.
    // SAFETY: setting a signal's disposition before any thread of ours starts; no
    // handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if matches!(
        argv.get(1).and_then(|a| a.to_str()),
        Some("--version" | "-V")
    ) && argv.len() == 2
    {
        print_version();
        return;
    }
    // mount(8) and mount.fuse3 call helpers as `PROG BACKING MNT -o OPTIONS`.
    let cmd = Cli::command();
    let subcommands: Vec<&str> = cmd
        .get_subcommands()
        .map(|s| s.get_name())
        .chain(["help"])
        .collect();
    if let Some(r) = mount_cmd::helper_args(&argv, &subcommands) {
        match r {
            Ok(a) => argv = a,
            Err(e) => {
                eprintln!("nacrithfs: {e}");
                std::process::exit(e.exit_code());
            }
        }
    }
    let cli = Cli::parse_from(argv);
    if matches!(cli.command, cli::Command::Mount(_)) {
        // The mount keeps Rust's default (EPIPE as an error): it must never die of a
        // closed pipe.
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    }
    // fuser warns when it finds the mount already gone at the end of a session (after
    // `umount` or `fusermount3 -u`, the normal way to stop); nacrithfs reports unmounts
    // itself.
    let filter = format!(
        "{},fuser::session=error,fuser::mnt=error",
        cli.command.default_log_filter()
    );
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp_millis()
        .init();
    if let Err(e) = run(cli) {
        eprintln!("nacrithfs: {e}");
        std::process::exit(e.exit_code());
    }
}

/// `nacrithfs --version`: the program, the container format it writes, and the
/// fingerprint the default model gives on this build (what its blobs record).
fn print_version() {
    println!("nacrithfs {}", env!("CARGO_PKG_VERSION"));
    println!(
        "NC06 container version 1 to {} (predictors: {})",
        nc06::format::VERSION,
        nc06::format::Flags(nc06::format::Flags::KNOWN)
    );
    println!(
        "backends: portable (spec {}){}",
        nacrithfs_engine::model::PORTABLE_SPEC_VERSION,
        if nacrithfs_engine::model::HAS_LLAMA {
            ", llama (llama-cpp-sys-2 0.1.160)"
        } else {
            "; llama.cpp not built in"
        }
    );
    match nacrithfs_engine::model::resolve_model_path(None) {
        Ok(p) => {
            let opts = nacrithfs_engine::model::ModelOptions::default();
            match nacrithfs_engine::model::fingerprint_of(&p, &opts) {
                Ok(f) => println!("default model: {} ({f})", p.display()),
                Err(e) => println!("default model: {} (unreadable: {e})", p.display()),
            }
        }
        Err(e) => println!("default model: none ({e})"),
    }
}
