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
    fleet::{facts::Campaign, prevalence::Fleet},
    model::EngineSettings,
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
    /// A configuration file whose `[fleet]` section is used: each finding
    /// is judged by the fleet (prevalence, campaigns) as the agent would.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The host the stream is replayed as (for the fleet; default: the
    /// configuration's `agent.host_name`, or this machine's name).
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,
    /// Replay the stream as if it were recorded this much later (`2h`,
    /// `90m`): one recording then plays several hosts at different times.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shift: Option<Duration>,
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
struct Tagged<'a, T> {
    kind: &'static str,
    #[serde(flatten)]
    finding: &'a T,
}

/// The fleet a replay's findings are judged by, if configured.
struct ReplayFleet {
    fleet: Fleet,
    /// Where its requests run: the caller's runtime (the replay runs on a
    /// blocking thread of it), or one of its own.
    runtime: tokio::runtime::Handle,
    _own: Option<tokio::runtime::Runtime>,
}

impl ReplayFleet {
    fn from_args(args: &ReplayArgs) -> anyhow::Result<Option<Self>> {
        let Some(path) = &args.config else {
            return Ok(None);
        };
        let raw = crate::config::RawConfig::load(path, true)?;
        let settings = crate::config::Settings::from_raw(raw, path)?;
        let Some((endpoint, fleet_settings)) = settings
            .raw
            .fleet
            .fleet()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        else {
            bail!(
                "{}: [fleet] has no urls: nothing to judge findings by",
                path.display()
            );
        };
        let host = args.host_name.clone().unwrap_or(settings.host_name);
        let (runtime, own) = match tokio::runtime::Handle::try_current() {
            Ok(handle) => (handle, None),
            Err(_) => {
                let own = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the fleet client's runtime")?;
                (own.handle().clone(), Some(own))
            }
        };
        Ok(Some(Self {
            fleet: Fleet::new(endpoint, fleet_settings, &host),
            runtime,
            _own: own,
        }))
    }
}

/// Where a replay's findings go: stdout, after the fleet judged them.
struct Output<W: Write> {
    out: W,
    findings: u64,
    campaigns: u64,
    fleet: Option<ReplayFleet>,
}

impl<W: Write> Output<W> {
    fn emit(&mut self, detections: Vec<Detection>) -> anyhow::Result<()> {
        for d in detections {
            match d {
                Detection::Finding(mut finding) => {
                    self.findings += 1;
                    let campaign: Option<Campaign> = match &mut self.fleet {
                        Some(f) => f.runtime.block_on(f.fleet.judge(&mut finding)),
                        None => None,
                    };
                    self.line("finding", &*finding)?;
                    if let Some(c) = campaign {
                        self.campaigns += 1;
                        self.line("campaign", &c)?;
                    }
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
    }

    fn line<T: Serialize>(&mut self, kind: &'static str, value: &T) -> anyhow::Result<()> {
        serde_json::to_writer(
            &mut self.out,
            &Tagged {
                kind,
                finding: value,
            },
        )?;
        self.out.write_all(b"\n")?;
        Ok(())
    }
}

/// Reads events from a file, calling `f` for each; reports bad lines with
/// their line number.
fn for_each_event(
    path: &Path,
    skip_invalid: bool,
    shift: Option<Duration>,
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
            Ok(mut event) => {
                if let Some(by) = shift {
                    event.shift(by);
                }
                f(event)?
            }
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
            for_each_event(&args.file, true, args.shift, |e| {
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
    let mut out = Output {
        out: std::io::BufWriter::new(stdout.lock()),
        findings: 0,
        campaigns: 0,
        fleet: ReplayFleet::from_args(args)?,
    };
    let mut events = 0u64;
    let mut learned_at = None;
    let skipped = for_each_event(&args.file, args.skip_invalid, args.shift, |event| {
        events += 1;
        if let Some(f) = &mut out.fleet
            && f.fleet.presence_due(event.time)
        {
            f.runtime.block_on(f.fleet.announce(event.time));
        }
        if learned_at.is_none() && event.time >= learn_until {
            learned_at = Some(event.time);
            out.emit(detector.finish_learning())?;
        }
        out.emit(detector.push(&event))
    })?;
    out.emit(detector.finish())?;
    out.out.flush()?;
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
        "monitor: replayed {events} events, {} windows; {} findings{}{}",
        progress.windows_seen,
        out.findings,
        match &out.fleet {
            Some(f) => format!(
                "; fleet: {} judged, {} unavailable, {} campaigns raised",
                f.fleet.stats.judged, f.fleet.stats.unavailable, out.campaigns
            ),
            None => String::new(),
        },
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
