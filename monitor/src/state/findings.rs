//! The agent's local record of findings, in its state directory:
//!
//! - `findings.jsonl`: every finding raised, with its explanation (what
//!   `monitor findings` shows, whatever the sinks did with it);
//! - `finding-windows.jsonl`: the behaviour window behind each finding, so an
//!   acknowledgement can teach the model exactly that behaviour;
//! - `acks.jsonl`: acknowledgements and their withdrawals, append-only, so
//!   who said what and when is never lost. The acknowledged set is the fold
//!   of this log; the running agent re-reads it when it changes.
//!
//! A line that cannot be parsed (a torn write after a crash, an edit by
//! hand) is reported with its file and line number and skipped: one bad
//! line must not hide every other finding.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
};

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::fileio::jsonl::read_lines;
use crate::fileio::{jsonl::BadLine, rotate::read_log};
use crate::{
    event::Timestamp,
    model::{AckedFinding, Window, finding::Finding, finding::finding_id},
};

/// One line of the local finding log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedFinding {
    /// The finding, with its explanation. (`alert` in logs written by earlier
    /// versions.)
    #[serde(alias = "alert")]
    pub finding: Finding,
    /// The host.
    pub host: String,
}

/// What an acknowledgement line does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckAction {
    /// The finding is benign: learn its behaviour.
    Ack,
    /// Withdraw an earlier acknowledgement.
    Withdraw,
}

/// One line of `acks.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckRecord {
    /// The finding id.
    pub id: String,
    /// Ack or withdraw.
    pub action: AckAction,
    /// Why, in the analyst's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who (the invoking user, `SUDO_USER` when run through sudo).
    pub by: String,
    /// When.
    pub time: Timestamp,
    /// The acknowledged behaviour (program, novelty facts, window), copied
    /// from the finding when acknowledged, so the acknowledgement survives
    /// the rotation of the finding log (absent in records of earlier
    /// versions, which are looked up in the logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<AckedFinding>,
}

/// The acknowledgements in force: the last record of each id, if an ack.
pub fn in_force(records: &[AckRecord]) -> BTreeMap<String, AckRecord> {
    let mut out = BTreeMap::new();
    for r in records {
        match r.action {
            AckAction::Ack => {
                out.insert(r.id.clone(), r.clone());
            }
            AckAction::Withdraw => {
                out.remove(&r.id);
            }
        }
    }
    out
}

/// The user behind this command.
pub fn invoking_user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }))
}

/// Finds a finding by id or unique id prefix.
pub fn find<'a>(findings: &'a [LoggedFinding], id: &str) -> Result<&'a LoggedFinding, String> {
    let matching: Vec<&LoggedFinding> = findings
        .iter()
        .filter(|f| f.finding.id.starts_with(id))
        .collect();
    let mut ids: Vec<&str> = matching.iter().map(|f| f.finding.id.as_str()).collect();
    ids.dedup();
    match ids.len() {
        0 => Err(format!("no finding with id {id:?}")),
        1 => Ok(matching[0]),
        _ => Err(format!(
            "id prefix {id:?} matches {} findings: {}",
            ids.len(),
            ids.join(", ")
        )),
    }
}

/// The behaviour a finding showed, as an acknowledgement keeps it: its
/// program and novelty facts, and its window when one was kept
/// (`windows_path` is the rotated log of kept windows).
pub fn behaviour_of(
    finding: &Finding,
    windows_path: &Path,
) -> std::io::Result<(AckedFinding, Vec<BadLine>)> {
    let (windows, bad) = read_log::<Window>(windows_path)?;
    let window = windows.into_iter().find(|w| finding_id(w) == finding.id);
    Ok((acked(finding, window), bad))
}

fn acked(finding: &Finding, window: Option<Window>) -> AckedFinding {
    AckedFinding {
        program: finding.program.clone(),
        facts: finding
            .novelty
            .iter()
            .map(|n| (n.kind, n.value.clone()))
            .collect(),
        window,
    }
}

/// What the engine needs to apply the acknowledgements in force: each
/// acknowledged finding's behaviour. Acknowledgements carry it; only those
/// written by earlier versions are looked up in the finding and window
/// logs (so a large finding log is read only for them).
pub fn acked_findings(
    acks: &BTreeMap<String, AckRecord>,
    findings_path: &Path,
    windows_path: &Path,
) -> std::io::Result<(BTreeMap<String, AckedFinding>, Vec<BadLine>)> {
    let mut out = BTreeMap::new();
    let mut legacy: BTreeSet<&str> = BTreeSet::new();
    for (id, record) in acks {
        match &record.behaviour {
            Some(b) => {
                out.insert(id.clone(), b.clone());
            }
            None => {
                legacy.insert(id.as_str());
            }
        }
    }
    if legacy.is_empty() {
        return Ok((out, Vec::new()));
    }
    let (logged, mut bad) = read_log::<LoggedFinding>(findings_path)?;
    let (windows, bad_windows) = read_log::<Window>(windows_path)?;
    bad.extend(bad_windows);
    let mut windows: HashMap<String, Window> = windows
        .into_iter()
        .map(|w| (finding_id(&w), w))
        .filter(|(id, _)| legacy.contains(id.as_str()))
        .collect();
    for f in logged {
        if legacy.contains(f.finding.id.as_str()) {
            let window = windows.remove(&f.finding.id);
            out.insert(f.finding.id.clone(), acked(&f.finding, window));
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, action: AckAction) -> AckRecord {
        AckRecord {
            id: id.into(),
            action,
            reason: None,
            by: "t".into(),
            time: Timestamp(0),
            behaviour: None,
        }
    }

    #[test]
    fn the_last_word_on_each_id_counts() {
        let log = [
            record("a", AckAction::Ack),
            record("b", AckAction::Ack),
            record("a", AckAction::Withdraw),
            record("c", AckAction::Ack),
            record("c", AckAction::Withdraw),
            record("c", AckAction::Ack),
        ];
        let ids: Vec<String> = in_force(&log).into_keys().collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn an_acknowledgement_carries_its_behaviour_and_needs_no_finding_log() {
        let dir = std::env::temp_dir().join(format!("monitor-acked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut with = record("new", AckAction::Ack);
        with.behaviour = Some(AckedFinding {
            program: "/usr/bin/cat".into(),
            facts: Default::default(),
            window: None,
        });
        let acks = in_force(&[with, record("old", AckAction::Ack)]);
        // No finding log at all (rotated away): the new record stands alone.
        let missing = dir.join("findings.jsonl");
        let (acked, bad) = acked_findings(&acks, &missing, &dir.join("w.jsonl")).unwrap();
        assert!(bad.is_empty());
        assert_eq!(acked.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(acked["new"].program, "/usr/bin/cat");
        // A record of an earlier version is looked up in the rotated logs.
        let logged: LoggedFinding =
            serde_json::from_str(include_str!("../../benches/fixtures/logged-finding.json"))
                .unwrap();
        let old_id = logged.finding.id.clone();
        crate::fileio::jsonl::append_line(&crate::fileio::rotate::generation(&missing, 1), &logged)
            .unwrap();
        let acks = in_force(&[record(&old_id, AckAction::Ack)]);
        let (acked, _) = acked_findings(&acks, &missing, &dir.join("w.jsonl")).unwrap();
        assert_eq!(acked[&old_id].program, logged.finding.program);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_lines_are_named_and_the_rest_is_kept() {
        let dir = std::env::temp_dir().join(format!("monitor-findings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acks.jsonl");
        let good = serde_json::to_string(&record("a", AckAction::Ack)).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"id\": \"torn\n{good}\n")).unwrap();
        let (items, bad) = read_lines::<AckRecord>(&path).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 2);
        assert!(bad[0].to_string().contains("acks.jsonl:2"), "{}", bad[0]);
        let (none, _) = read_lines::<AckRecord>(&dir.join("missing.jsonl")).unwrap();
        assert!(none.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
