//! The `monitor` binary.
//!
//! Exit codes: 0 success, 2 error (the message names what failed and why).

use clap::Parser as _;
use monitor::cli::{Cli, Command, init_logging};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_json);
    if matches!(cli.command, Command::Run(_) | Command::Record(_)) {
        monitor::sched::start_as_batch();
    }
    // `run` on one worker: its stages hand events to each other through
    // channels, and on one thread a hand-off is a queue push, not a
    // cross-thread wake-up (measured: bench/compare-agents.sh). The slow
    // work (the fit, the model save) runs on blocking threads.
    let workers = if matches!(cli.command, Command::Run(_)) {
        1
    } else {
        2
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("monitor: error: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => monitor::cli::run::run(args).await,
            Command::Status(args) => monitor::cli::run::status(&args),
            Command::Findings(args) => monitor::cli::findings::findings(&args),
            Command::Ack(args) => monitor::cli::findings::ack(&args),
            Command::Drill(args) => monitor::cli::drill::run(&args),
            Command::Report(args) => monitor::cli::report::run(&args),
            Command::DrillStep(args) => monitor::cli::drill::step(&args),
            Command::Config(cmd) => monitor::cli::run::config(&cmd),
            Command::Model(cmd) => monitor::cli::model::run(&cmd).await,
            Command::Record(args) => monitor::cli::record::run(args).await,
            Command::Verifier(args) => monitor::cli::verifier::run(&args),
            Command::BenchFloor => monitor::cli::bench_floor().await,
            Command::Eval(args) => monitor::cli::eval::run(&args),
            // Off the runtime's threads: the replay blocks on the fleet's
            // answers (with a `[fleet]`) through this runtime's handle.
            Command::Replay(args) => {
                tokio::task::spawn_blocking(move || monitor::cli::replay::run(&args))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("the replay panicked: {e}")))
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("monitor: error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
