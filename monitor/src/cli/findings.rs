//! `monitor findings` and `monitor ack`: findings for people at a terminal,
//! from the agent's local finding log (see `crate::findings`).

use std::{
    collections::BTreeMap,
    io::{Read as _, Seek as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    event::Timestamp,
    fileio::{
        jsonl::{append_line, read_lines},
        rotate::read_log,
    },
    model::finding::printable,
    state::{
        findings::{self, AckAction, AckRecord, LoggedFinding, in_force},
        paths::StatePaths,
    },
};

/// `monitor findings`.
#[derive(Debug, clap::Args)]
pub struct FindingsArgs {
    /// Show only this finding (an id or a unique prefix), explained.
    pub id: Option<String>,
    /// Explain every finding listed (process tree, observed vs. baseline,
    /// why it matters, next steps), not one line each.
    #[arg(long, short = 'x')]
    pub explain: bool,
    /// Keep watching and print new findings as they are raised.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N findings.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Print the findings as JSON Lines (as logged).
    #[arg(long)]
    pub json: bool,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
    pub state_dir: PathBuf,
}

/// `monitor ack`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["id", "list"])))]
pub struct AckArgs {
    /// The finding to acknowledge as benign (an id or a unique prefix).
    pub id: Option<String>,
    /// Why it is benign (kept with the acknowledgement).
    #[arg(long, short = 'r')]
    pub reason: Option<String>,
    /// Withdraw the acknowledgement of ID instead: the behaviour raises findings again.
    #[arg(long, requires = "id")]
    pub withdraw: bool,
    /// List the acknowledgements in force, and withdrawn ones.
    #[arg(long, conflicts_with_all = ["id", "withdraw", "reason"])]
    pub list: bool,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/monitor")]
    pub state_dir: PathBuf,
}

fn load_findings(paths: &StatePaths) -> anyhow::Result<Vec<LoggedFinding>> {
    let path = paths.findings();
    let (items, bad) = read_log::<LoggedFinding>(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    for b in bad {
        eprintln!("monitor: warning: {b}");
    }
    Ok(items)
}

fn load_acks(paths: &StatePaths) -> anyhow::Result<Vec<AckRecord>> {
    let path = paths.acks();
    let (items, bad) = read_lines::<AckRecord>(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    for b in bad {
        eprintln!("monitor: warning: {b}");
    }
    Ok(items)
}

/// `2026-11-27 23:57:19` (UTC, seconds).
fn short_time(t: Timestamp) -> String {
    let text = t.to_string();
    text.get(..19).map_or(text.clone(), |s| s.replace('T', " "))
}

fn one_line(f: &LoggedFinding, acks: &BTreeMap<String, AckRecord>) -> String {
    let a = &f.finding;
    let mut line = format!(
        "{}  {}  {:<8}  {:.4}  {}",
        short_time(a.time),
        a.id,
        a.guidance.severity.name(),
        a.score,
        printable(&a.summary)
    );
    if let Some(ack) = acks.get(&a.id) {
        line.push_str(&format!(
            "  [acknowledged by {}{}]",
            printable(&ack.by),
            ack.reason
                .as_deref()
                .map(|r| format!(": {}", printable(r)))
                .unwrap_or_default()
        ));
    }
    line
}

fn print_finding(
    f: &LoggedFinding,
    acks: &BTreeMap<String, AckRecord>,
    args: &FindingsArgs,
) -> anyhow::Result<()> {
    if args.json {
        let line = crate::display::json_with_visible_escapes(serde_json::to_vec(f)?);
        println!("{}", String::from_utf8_lossy(&line));
    } else if args.explain || args.id.is_some() {
        println!(
            "finding {} on {} at {}",
            f.finding.id,
            printable(&f.host),
            f.finding.time
        );
        if let Some(ack) = acks.get(&f.finding.id) {
            println!(
                "acknowledged as benign by {} at {}{}",
                printable(&ack.by),
                ack.time,
                ack.reason
                    .as_deref()
                    .map(|r| format!(": {}", printable(r)))
                    .unwrap_or_default()
            );
        }
        println!("{}", f.finding.explanation());
    } else {
        println!("{}", one_line(f, acks));
    }
    Ok(())
}

/// Runs `monitor findings`.
pub fn findings(args: &FindingsArgs) -> anyhow::Result<()> {
    let paths = StatePaths::new(&args.state_dir);
    if !args.state_dir.is_dir() {
        bail!(
            "no agent state at {} (is the agent running with --state-dir {}?)",
            args.state_dir.display(),
            args.state_dir.display()
        );
    }
    let all = load_findings(&paths)?;
    let acks = in_force(&load_acks(&paths)?);
    if let Some(id) = &args.id {
        let f = findings::find(&all, id)
            .map_err(|e| anyhow::anyhow!("{e} in {}", paths.findings().display()))?;
        return print_finding(f, &acks, args);
    }
    let skip = args.last.map_or(0, |n| all.len().saturating_sub(n));
    if all.is_empty() && !args.follow && !args.json {
        println!("no findings in {}", paths.findings().display());
    }
    for f in &all[skip..] {
        print_finding(f, &acks, args)?;
    }
    if args.follow {
        follow(&paths, args)?;
    }
    Ok(())
}

/// Prints findings appended to the log from now on (polls twice a second;
/// survives the log being replaced or truncated).
fn follow(paths: &StatePaths, args: &FindingsArgs) -> anyhow::Result<()> {
    let path = paths.findings();
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut pending = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated or truncated
            pending.clear();
        }
        if len == offset {
            continue;
        }
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut chunk = Vec::new();
        file.take(len - offset).read_to_end(&mut chunk)?;
        offset = len;
        pending.extend_from_slice(&chunk);
        // Only whole lines; a line being written waits for its newline.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<LoggedFinding>(&line) {
                Ok(f) => {
                    let acks = in_force(&load_acks(paths)?);
                    print_finding(&f, &acks, args)?;
                }
                Err(e) if !line.iter().all(u8::is_ascii_whitespace) => {
                    eprintln!(
                        "monitor: warning: {}: skipped an unreadable line: {e}",
                        path.display()
                    );
                }
                Err(_) => {}
            }
        }
    }
}

/// Runs `monitor ack`.
pub fn ack(args: &AckArgs) -> anyhow::Result<()> {
    let paths = StatePaths::new(&args.state_dir);
    let records = load_acks(&paths)?;
    if args.list {
        let active = in_force(&records);
        if records.is_empty() {
            println!("no acknowledgements in {}", paths.acks().display());
        }
        for r in &records {
            let state = match (r.action, active.get(&r.id) == Some(r)) {
                (AckAction::Ack, true) => "in force",
                (AckAction::Ack, false) => "withdrawn later",
                (AckAction::Withdraw, _) => "withdrawal",
            };
            println!(
                "{}  {}  {:<16} by {}{}",
                short_time(r.time),
                r.id,
                state,
                printable(&r.by),
                r.reason
                    .as_deref()
                    .map(|x| format!(": {}", printable(x)))
                    .unwrap_or_default()
            );
        }
        return Ok(());
    }
    let id = args
        .id
        .as_deref()
        .expect("clap requires an id without --list");
    let all = load_findings(&paths)?;
    let finding = findings::find(&all, id)
        .map_err(|e| anyhow::anyhow!("{e} in {}", paths.findings().display()))?;
    let id = finding.finding.id.clone();
    let active = in_force(&records);
    let action = if args.withdraw {
        if !active.contains_key(&id) {
            bail!("finding {id} is not acknowledged; nothing to withdraw");
        }
        AckAction::Withdraw
    } else {
        if active.contains_key(&id) {
            bail!("finding {id} is already acknowledged (see `monitor ack --list`)");
        }
        AckAction::Ack
    };
    let behaviour = match action {
        AckAction::Ack => {
            let windows = paths.finding_windows();
            let (behaviour, bad) = findings::behaviour_of(&finding.finding, &windows)
                .with_context(|| format!("cannot read {}", windows.display()))?;
            for b in bad {
                eprintln!("monitor: warning: {b}");
            }
            Some(behaviour)
        }
        AckAction::Withdraw => None,
    };
    let record = AckRecord {
        id: id.clone(),
        action,
        reason: args.reason.clone(),
        by: findings::invoking_user(),
        time: Timestamp::now(),
        behaviour,
    };
    append_line(&paths.acks(), &record)
        .with_context(|| format!("cannot write {}", paths.acks().display()))?;
    match action {
        AckAction::Ack => println!(
            "acknowledged {id} ({}): a running agent learns it within seconds, and {} stops raising findings on this behaviour",
            printable(&finding.finding.summary),
            printable(&finding.finding.program)
        ),
        AckAction::Withdraw => {
            println!("withdrew the acknowledgement of {id}: this behaviour raises findings again")
        }
    }
    Ok(())
}
