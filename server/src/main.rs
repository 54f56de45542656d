//! The `creditd` binary.

use clap::Parser;
use creditd::cli::Options;
use tracing_subscriber::EnvFilter;

// The system allocator, deliberately: mimalloc made the engine
// microbenchmark faster but tripled the server's open-loop p99 on 2 cores
// (docs/PERFORMANCE.md, "Allocator").

fn main() {
    let opts = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&opts.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "creditd starting");
    if let Err(message) = creditd::server::run(opts) {
        tracing::error!("{message}");
        eprintln!("creditd: {message}");
        std::process::exit(1);
    }
}
