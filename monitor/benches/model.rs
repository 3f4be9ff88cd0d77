//! `cargo bench --bench model`: how fast the behaviour model learns and
//! scores, on the ADFA-LD dataset (`../shared/datasets/adfa-ld/ADFA-LD`, or
//! the directory in `MONITOR_ADFA`).
//!
//! Prints, with medians over repeated runs:
//! - learning time on the 833 training traces (what `monitor eval` does);
//! - the model file's size;
//! - trace windows scored per second on one core (full syscall sequences:
//!   the sequence model runs);
//! - live-style windows scored per second on one core: the same traces as
//!   the agent sees processes live (syscall counts and pair buckets, no
//!   sequence), spread over 40 executables with their novelty facts.

use std::{path::PathBuf, time::Instant};

use monitor::model::{
    baseline::Baseline,
    eval::{self, Dataset},
    persist::{self, ModelFile},
    window::Window,
};

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn dataset_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MONITOR_ADFA") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/adfa-ld/ADFA-LD")
}

/// A window as the live agent builds it for a process.
fn live_window(i: usize, trace: &[u16]) -> Window {
    let mut w = Window::from_sequence(&format!("/usr/bin/program-{}", i % 40), trace.to_vec());
    w.sequence.clear();
    w.pid = 1000 + i as u32;
    w.facts.executed.insert(format!("/usr/bin/child-{}", i % 7));
    w.facts.peers.insert(format!("10.0.0.{}:443", i % 5));
    w.activity.spawned = (i % 3) as u32;
    w.activity.connects = (i % 5) as u32;
    w
}

/// Windows per second scoring `windows` in a loop on this thread.
fn scoring_rate(baseline: &Baseline, windows: &[Window]) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut checksum = 0.0;
        for w in windows {
            checksum += baseline.score(w).score;
        }
        std::hint::black_box(checksum);
        rates.push(windows.len() as f64 / started.elapsed().as_secs_f64());
    }
    median(rates)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this harness takes no options.
    let dir = dataset_dir();
    let data = Dataset::load(&dir).map_err(|e| {
        anyhow::anyhow!("{e}\nthe model benchmark needs ADFA-LD: set MONITOR_ADFA to its directory")
    })?;
    println!(
        "model benchmark on {} ({} training traces)",
        dir.display(),
        data.train.len()
    );

    let mut fit_secs = Vec::new();
    let mut baseline = None;
    for _ in 0..RUNS {
        let started = Instant::now();
        baseline = Some(data.fit()?);
        fit_secs.push(started.elapsed().as_secs_f64());
    }
    let baseline = baseline.expect("RUNS > 0");
    let fit = median(fit_secs.clone());
    println!(
        "learning on the training set:      {fit:.2} s (median of {RUNS}; min {:.2} s, max {:.2} s)",
        fit_secs.iter().copied().fold(f64::INFINITY, f64::min),
        fit_secs.iter().copied().fold(0.0, f64::max)
    );
    let file = ModelFile {
        created: monitor::event::Timestamp(0),
        saved: monitor::event::Timestamp(0),
        host: "bench".into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        baseline: baseline.clone(),
    };
    let bytes = persist::encode(&file);
    println!(
        "model file:                        {:.2} MiB",
        bytes.len() as f64 / (1 << 20) as f64
    );

    let traces: Vec<Window> = data
        .test
        .iter()
        .chain(&data.attacks)
        .map(eval::window)
        .collect();
    let calls: usize = traces.iter().map(|w| w.sequence.len()).sum();
    let rate = scoring_rate(&baseline, &traces);
    println!(
        "trace windows scored (one core):   {rate:.0} /s ({:.1} M syscalls/s; mean {} calls per trace)",
        rate * calls as f64 / traces.len() as f64 / 1e6,
        calls / traces.len()
    );

    let train: Vec<Window> = data
        .train
        .iter()
        .enumerate()
        .map(|(i, t)| live_window(i, &t.sequence))
        .collect();
    let live_baseline = Baseline::fit(&train)?;
    let live: Vec<Window> = data
        .test
        .iter()
        .chain(&data.attacks)
        .enumerate()
        .map(|(i, t)| live_window(i, &t.sequence))
        .collect();
    let rate = scoring_rate(&live_baseline, &live);
    println!(
        "live windows scored (one core):    {rate:.0} /s ({} programs, {} features)",
        live_baseline.programs.len(),
        live_baseline.space.len()
    );
    Ok(())
}
