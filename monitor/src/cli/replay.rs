//! `monitor replay FILE`: a recorded JSONL stream through learning and
//! detection; findings as JSON Lines on stdout.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    detect::{Detection, Detector},
    event::{Event, Timestamp},
    model::{EngineSettings, finding::Finding},
};

/// Arguments of `monitor replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A JSON Lines file written by `monitor record` (`-` for stdin is not
    /// supported: the stream is read twice when learning for a fraction).
    pub file: PathBuf,
    /// How much of the stream to learn from: a duration (`90s`, `10m`) or a
    /// fraction of the stream's time span (`0.5`, `50%`).
    #[arg(long, default_value = "50%")]
    pub learn_for: String,
    /// False-alarm rate, per window, the finding threshold is calibrated for.
    #[arg(long, default_value_t = 0.0005)]
    pub false_alarm_rate: f64,
    /// Skip lines that are not valid events (counted and reported) instead
    /// of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Length of a behaviour window when the stream has no syscall counts.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub window: f64,
}

/// How much to learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LearnFor {
    /// A duration of stream time.
    Duration(Duration),
    /// A fraction of the stream's span.
    Fraction(f64),
}

/// Parses `--learn-for`.
pub fn parse_learn_for(text: &str) -> anyhow::Result<LearnFor> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .with_context(|| format!("--learn-for {text:?}: not a percentage"))?;
        return fraction(v / 100.0, text);
    }
    if let Ok(v) = t.parse::<f64>() {
        return fraction(v, text);
    }
    humantime::parse_duration(t)
        .map(LearnFor::Duration)
        .with_context(|| format!("--learn-for {text:?}: expected a duration like 90s or 10m, or a fraction like 0.5 or 50%"))
}

fn fraction(v: f64, text: &str) -> anyhow::Result<LearnFor> {
    if !(v > 0.0 && v < 1.0) {
        bail!("--learn-for {text:?}: a fraction must be between 0 and 1 (exclusive)");
    }
    Ok(LearnFor::Fraction(v))
}

#[derive(Serialize)]
struct Tagged<'a> {
    kind: &'static str,
    #[serde(flatten)]
    finding: &'a Finding,
}

/// Reads events from a file, calling `f` for each; reports bad lines with
/// their line number.
fn for_each_event(
    path: &Path,
    skip_invalid: bool,
    mut f: impl FnMut(Event) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut skipped = 0;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Event>(&line) {
            Ok(event) => f(event)?,
            Err(err) if skip_invalid => {
                skipped += 1;
                if skipped <= 5 {
                    tracing::warn!("{}:{}: skipped invalid event: {err}", path.display(), i + 1);
                }
            }
            Err(err) => bail!(
                "{}:{}: invalid event: {err} (use --skip-invalid to skip such lines)",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(skipped)
}

/// Runs the command.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let learn_for = parse_learn_for(&args.learn_for)?;
    if !(args.false_alarm_rate > 0.0 && args.false_alarm_rate < 1.0) {
        bail!(
            "--false-alarm-rate must be between 0 and 1, got {}",
            args.false_alarm_rate
        );
    }
    let window_len = super::record::positive_secs(args.window, "--window")?;
    // A fraction needs the stream's span: a first, cheap pass.
    let learn_until = match learn_for {
        LearnFor::Fraction(f) => {
            let (mut first, mut last) = (None::<Timestamp>, Timestamp::default());
            for_each_event(&args.file, true, |e| {
                first.get_or_insert(e.time);
                last = last.max(e.time);
                Ok(())
            })?;
            let first =
                first.with_context(|| format!("{} holds no events", args.file.display()))?;
            first.plus(last.since(first).mul_f64(f))
        }
        LearnFor::Duration(_) => Timestamp(u64::MAX),
    };
    let settings = EngineSettings {
        learn_for: match learn_for {
            LearnFor::Duration(d) => d,
            LearnFor::Fraction(_) => Duration::MAX,
        },
        min_windows: crate::model::baseline::MIN_WINDOWS,
        false_alarm_rate: args.false_alarm_rate,
        ..EngineSettings::default()
    };
    let mut detector = Detector::learning(settings, window_len);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut findings = 0u64;
    let mut events = 0u64;
    let mut learned_at = None;
    let emit = |detections: Vec<Detection>,
                out: &mut dyn Write,
                findings: &mut u64|
     -> anyhow::Result<()> {
        for d in detections {
            match d {
                Detection::Finding(a) => {
                    *findings += 1;
                    serde_json::to_writer(
                        &mut *out,
                        &Tagged {
                            kind: "finding",
                            finding: &a,
                        },
                    )?;
                    out.write_all(b"\n")?;
                }
                Detection::Learned { windows, programs } => {
                    eprintln!(
                        "monitor: baseline learned from {windows} windows ({programs} programs with their own model); detecting"
                    );
                }
                Detection::LearningExtended(why) => eprintln!("monitor: still learning: {why}"),
                // The finding it repeats is already in the output.
                // A replay's engine fits inline.
                Detection::Repeat(_) | Detection::FitDue => {}
            }
        }
        Ok(())
    };
    let skipped = for_each_event(&args.file, args.skip_invalid, |event| {
        events += 1;
        if learned_at.is_none() && event.time >= learn_until {
            learned_at = Some(event.time);
            let d = detector.finish_learning();
            emit(d, &mut out, &mut findings)?;
        }
        let d = detector.push(&event);
        emit(d, &mut out, &mut findings)
    })?;
    let d = detector.finish();
    emit(d, &mut out, &mut findings)?;
    out.flush()?;
    let progress = detector.progress();
    if detector.engine().baseline().is_none() {
        bail!(
            "the stream ended while learning ({:.0} s of stream, {} windows, {} more needed): \
             use a shorter --learn-for",
            progress.learned_secs,
            progress.baseline_windows,
            progress.windows_needed
        );
    }
    eprintln!(
        "monitor: replayed {events} events, {} windows; {findings} findings{}",
        progress.windows_seen,
        if skipped > 0 {
            format!("; {skipped} invalid lines skipped")
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_for_accepts_durations_and_fractions() {
        assert_eq!(
            parse_learn_for("90s").unwrap(),
            LearnFor::Duration(Duration::from_secs(90))
        );
        assert_eq!(parse_learn_for("50%").unwrap(), LearnFor::Fraction(0.5));
        assert_eq!(parse_learn_for("0.25").unwrap(), LearnFor::Fraction(0.25));
        let err = parse_learn_for("1.5").unwrap_err().to_string();
        assert!(err.contains("between 0 and 1"), "{err}");
        let err = parse_learn_for("soon").unwrap_err().to_string();
        assert!(err.contains("\"soon\"") && err.contains("10m"), "{err}");
    }
}
