//! The `creditd` binary.

#![forbid(unsafe_code)]

use clap::Parser;
use creditd::cli::{LogFormat, Options};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

// The system allocator, deliberately: mimalloc made the engine
// microbenchmark faster but tripled the server's open-loop p99 on 2 cores
// (docs/PERFORMANCE.md, "Allocator").

fn main() {
    let opts = Options::parse();
    let filter = match EnvFilter::try_new(&opts.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "creditd: --log {:?} is not a log filter ({e}); try info, debug or creditd=debug",
                opts.log
            );
            std::process::exit(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match opts.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "creditd starting");
    if let Err(message) = creditd::server::run(opts) {
        // Once, through the log (which goes to stderr as well).
        tracing::error!("creditd: {message}");
        std::process::exit(1);
    }
}
