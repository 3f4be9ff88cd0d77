//! `cargo xtask`: everything that needs more than `cargo build`.
//!
//! Each command first prepares what is missing on this machine (printing one
//! line per step and skipping finished ones), then does its job:
//!
//! - `build`: nightly `rust-src`, `bpf-linker` built against nightly's own
//!   libLLVM, then `cargo build --release`; the agent lands at
//!   `target/release/monitor`.
//! - `run`: `build`, the kernel mounts, then `monitor run` as root.
//! - `test`: `build`, mounts, the servers and tools the tests use, then the
//!   whole test suite as root, then the kernel matrix in QEMU (`vm`).
//! - `verifier`: `build`, then the verifier budget table on this kernel.
//! - `bench`: benchmarks (`overhead`, `model`, `sinks`, `nats`, `startup`).
//! - `fuzz`: every fuzz target (cargo fuzz, nightly) for N seconds.

mod bench;
mod cycles;
mod fuzz;
mod prepare;
mod run;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, run and test monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare the toolchain and build the agent (target/release/monitor).
    Build,
    /// Build, then run the agent as root (default: `monitor run`).
    Run {
        /// Arguments for `monitor` (default: `run`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, prepare test dependencies, and run every test as root: the
    /// whole suite on this kernel, then the guest checks on every kernel of
    /// the VM matrix.
    Test {
        /// Only tests whose name contains this filter (this kernel only).
        filter: Option<String>,
        /// Which kernels: `host` (this one, the whole suite), a matrix id
        /// (`5.10`, `6.1`, `6.12`, `6.12-deb13`, `6.18`, `7.3`, or several,
        /// comma-separated) or `all` (the matrix). Default: host, then all.
        #[arg(long)]
        kernel: Option<String>,
    },
    /// Check that no modules of a crate import each other in a cycle.
    Cycles,
    /// Build, then print what the kernel's verifier spends on each program
    /// under each setting (processed instructions against the budget).
    Verifier,
    /// Run every fuzz target (fuzz/, cargo fuzz on nightly) from its
    /// checked-in seeds; fails on a crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets run at once.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Only targets whose name contains this.
        only: Option<String>,
    },
    /// Run a benchmark: `overhead`, `model`, `sinks` or `nats`.
    Bench {
        /// Which benchmark.
        which: String,
        /// Extra arguments for it.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build => prepare::build().map(|_| ()),
        Command::Run { args } => run::run(args),
        Command::Test { filter, kernel } => test::test(filter, kernel),
        Command::Verifier => test::verifier(),
        Command::Cycles => cycles::run(),
        Command::Bench { which, args } => bench::bench(&which, args),
        Command::Fuzz {
            seconds,
            jobs,
            only,
        } => fuzz::fuzz(seconds, jobs, only),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
