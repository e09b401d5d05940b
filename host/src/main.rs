//! The `hyperplane` binary: the server (`serve`) and the API client commands.

use clap::Parser;

/// mimalloc rather than the system allocator: the server allocates many small, short-lived
/// buffers on several threads (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = hyperplane::cli::Cli::parse();
    match hyperplane::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
