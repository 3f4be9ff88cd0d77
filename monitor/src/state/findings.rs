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

use crate::fileio::jsonl::{BadLine, read_lines};
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

/// What the engine needs to apply the acknowledgements in force: each
/// acknowledged finding's program, novelty facts and (when kept) window.
pub fn acked_findings(
    findings: &[LoggedFinding],
    acks: &BTreeMap<String, AckRecord>,
    windows_path: &Path,
) -> std::io::Result<(BTreeMap<String, AckedFinding>, Vec<BadLine>)> {
    let wanted: BTreeSet<&str> = acks.keys().map(String::as_str).collect();
    let mut windows: HashMap<String, Window> = HashMap::new();
    let mut bad = Vec::new();
    if !wanted.is_empty() {
        let (all, problems) = read_lines::<Window>(windows_path)?;
        bad = problems;
        for w in all {
            let id = finding_id(&w);
            if wanted.contains(id.as_str()) {
                windows.insert(id, w);
            }
        }
    }
    let mut out = BTreeMap::new();
    for id in acks.keys() {
        let Some(f) = findings.iter().find(|f| &f.finding.id == id) else {
            continue;
        };
        out.insert(
            id.clone(),
            AckedFinding {
                program: f.finding.program.clone(),
                facts: f
                    .finding
                    .novelty
                    .iter()
                    .map(|n| (n.kind, n.value.clone()))
                    .collect(),
                window: windows.remove(id),
            },
        );
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
