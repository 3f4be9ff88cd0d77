//! OCSF (Open Cybersecurity Schema Framework) records, version [`VERSION`],
//! `host` profile.
//!
//! - findings: *Detection Finding* (class 2004);
//! - raw activity, when exported: *Process Activity* (1007), *Network
//!   Activity* (4001), *File System Activity* (1001);
//! - the agent's own lifecycle, heartbeats and health: *Application
//!   Lifecycle* (6002).
//!
//! Every class is validated against the official OCSF JSON Schema in the
//! tests (`tests/kernel/ocsf.rs`), so a field the schema rejects fails the
//! build's tests. Byte strings that are not UTF-8 appear lossily here (OCSF
//! fields are strings); the exact bytes stay in `unmapped.monitor`.

use serde_json::{Value, json};

use crate::{
    event::{Ancestor, Detail, Event, Process, Timestamp},
    fleet::facts::Campaign,
    model::finding::Finding,
};

/// The OCSF version emitted.
pub const VERSION: &str = "1.4.0";
/// Product name.
pub const PRODUCT: &str = "monitor";

/// Context shared by every record: the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Host name.
    pub name: String,
    /// Kernel release.
    pub kernel: String,
}

impl Host {
    /// This host.
    pub fn current(name: &str) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self {
            name: name.to_owned(),
            kernel: kernel.trim().to_owned(),
        }
    }

    fn device(&self) -> Value {
        json!({
            "hostname": self.name,
            "type_id": 1,
            "type": "Server",
            "os": { "name": "Linux", "type_id": 200, "type": "Linux", "kernel_release": self.kernel },
        })
    }
}

fn metadata(uid: Option<&str>) -> Value {
    let mut m = json!({
        "version": VERSION,
        "profiles": ["host"],
        "product": {
            "name": PRODUCT,
            "vendor_name": PRODUCT,
            "version": env!("CARGO_PKG_VERSION"),
        },
    });
    if let Some(uid) = uid {
        m["uid"] = json!(uid);
    }
    m
}

/// Milliseconds of a timeline instant, in wall-clock time as the wall clock
/// reads now (`event::time::set_wall_correction`).
fn ms(t: crate::event::Timestamp) -> u64 {
    t.on_wall_clock().as_millis()
}

/// A unique id for a process instance: pid and start time.
fn process_uid(p: &Process) -> String {
    format!("{}-{}", p.pid, p.start_time.map_or(0, |t| t.0))
}

fn cmd_line(args: &[crate::event::ByteString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn file_of(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    json!({ "name": if name.is_empty() { "/" } else { name }, "path": path, "type_id": 1, "type": "Regular File" })
}

/// An OCSF `process` object.
pub fn process(p: &Process, parent: Option<&Process>, ancestry: &[Ancestor]) -> Value {
    let mut v = json!({
        "pid": p.pid,
        "uid": process_uid(p),
        "name": p.comm.to_string_lossy(),
        "user": user(p.uid, p.user.as_deref()),
    });
    if let Some(exe) = &p.exe {
        v["file"] = file_of(&exe.to_string_lossy());
    }
    if !p.args.is_empty() {
        v["cmd_line"] = json!(cmd_line(&p.args));
    }
    if let Some(tid) = p.tid {
        v["tid"] = json!(tid);
    }
    if let Some(start) = p.start_time {
        v["created_time"] = json!(ms(start));
    }
    if let Some(parent) = parent {
        v["parent_process"] = process(parent, None, &[]);
    }
    if !ancestry.is_empty() {
        v["lineage"] = json!(
            ancestry
                .iter()
                .map(|a| a.exe.as_ref().map_or_else(
                    || a.comm.to_string_lossy().into_owned(),
                    |e| e.to_string_lossy().into_owned()
                ))
                .collect::<Vec<_>>()
        );
    }
    v
}

fn user(uid: u32, name: Option<&str>) -> Value {
    let mut u = json!({ "uid": uid.to_string() });
    if let Some(name) = name {
        u["name"] = json!(name);
    }
    u
}

/// OCSF severity names by `severity_id`.
const OCSF_SEVERITY: [&str; 7] = [
    "Unknown",
    "Informational",
    "Low",
    "Medium",
    "High",
    "Critical",
    "Fatal",
];

/// A Detection Finding for a finding.
pub fn finding(finding: &Finding, host: &Host) -> Value {
    let severity = finding.guidance.severity;
    let severity_id = severity.ocsf_id();
    let proc = finding.process.as_ref();
    let mut v = new_detection_finding(
        ms(finding.time),
        severity_id,
        &finding.id,
        &finding.summary,
        host,
        json!({
            "start_time": ms(finding.window_start),
            "end_time": ms(finding.window_end),
            "confidence_score": (finding.score * 100.0).round() as u32,
            "risk_score": (finding.score * 100.0).round() as u32,
            "finding_info": {
                "uid": finding.id,
                "title": finding.summary,
                "desc": finding.explanation(),
                "attacks": finding.guidance.techniques.iter().map(|t| json!({
                    "technique": { "uid": t.id, "name": t.name },
                    "tactic": { "uid": t.tactic_id, "name": t.tactic },
                    "version": "15.1",
                })).collect::<Vec<_>>(),
                "types": ["Behavioral Anomaly"],
                "first_seen_time": ms(finding.window_start),
                "last_seen_time": ms(finding.window_end),
                "analytic": {
                    "name": "monitor behaviour baseline",
                    "type_id": 4,
                    "type": "Learning (ML/DL)",
                    "desc": "Per-host baseline: k-means clusters per executable program, nearest neighbours and categorical novelty, calibrated to a false-alarm rate",
                },
            },
            "unmapped": {
                "monitor": {
                    "program": finding.program,
                    "parent_program": finding.parent_program,
                    "score": finding.score,
                    "threshold": finding.threshold,
                    "false_alarm_rate": finding.false_alarm_rate,
                    "deviations": finding.deviations,
                    "nearest_cluster": finding.nearest_cluster,
                    "novelty": finding.novelty,
                    "guidance": finding.guidance,
                    "syscalls": finding.syscalls,
                    "incomplete": finding.incomplete,
                    "process": finding.process,
                    "fleet": finding.fleet,
                },
            },
        }),
    );
    if let Some(fleet) = &finding.fleet {
        v["enrichments"] = json!([{
            "name": "fleet_prevalence",
            "value": fleet.text,
            "type": "fleet",
            "data": fleet,
        }]);
    }
    if let Some(p) = proc {
        let parent = finding.ancestry.first().map(|a| Process {
            pid: a.pid,
            comm: a.comm.clone(),
            exe: a.exe.clone(),
            args: a.args.clone(),
            uid: a.uid,
            ..Default::default()
        });
        let process = process(p, parent.as_ref(), &finding.ancestry);
        v["actor"] = json!({ "process": process, "user": user(p.uid, p.user.as_deref()) });
        v["evidences"] = json!([{ "process": process, "data": { "novelty": finding.novelty } }]);
    } else {
        v["evidences"] =
            json!([{ "data": { "novelty": finding.novelty, "program": finding.program } }]);
    }
    v
}

/// The fields every Detection Finding (Create) carries, with `rest` added.
fn new_detection_finding(
    time_ms: u64,
    severity_id: u8,
    uid: &str,
    message: &str,
    host: &Host,
    rest: Value,
) -> Value {
    let mut v = json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "time": time_ms,
        "severity_id": severity_id,
        "severity": OCSF_SEVERITY[usize::from(severity_id)],
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "message": message,
        "metadata": metadata(Some(uid)),
        "device": host.device(),
    });
    if let (Some(fields), Value::Object(rest)) = (v.as_object_mut(), rest) {
        fields.extend(rest);
    }
    v
}

/// A Detection Finding about the sensor itself: its hooks or maps were
/// changed by someone else (T1562.001, Impair Defenses: Disable or Modify
/// Tools). `problems` are what the integrity check found, one per line.
pub fn tamper_finding(host: &Host, problems: &[String]) -> Value {
    let now = crate::event::Timestamp::now();
    let title = format!(
        "monitor's kernel sensor was tampered with: {}",
        problems.join("; ")
    );
    let id = format!(
        "{:016x}",
        crate::hash::Fnv1a::default()
            .write(title.as_bytes())
            .write(&now.0.to_le_bytes())
            .finish()
    );
    new_detection_finding(
        now.as_millis(),
        5,
        &id,
        &title,
        host,
        json!({
            "finding_info": {
                "uid": id,
                "title": title,
                "desc": format!(
                    "{title}\n\nwhy it matters:\n  - only root can change a loaded eBPF program's maps or links; someone with root is blinding the agent while it looks alive\n\nnext steps:\n  - find who holds root on this host now (logins, sudo, services running as root) and what ran `bpf()` recently\n  - treat the host as compromised until explained"
                ),
                "attacks": [{
                    "technique": { "uid": "T1562.001", "name": "Impair Defenses: Disable or Modify Tools" },
                    "tactic": { "uid": "TA0005", "name": "Defense Evasion" },
                    "version": "15.1",
                }],
                "types": ["Sensor Tampering"],
                "analytic": {
                    "name": "monitor sensor integrity check",
                    "type_id": 1,
                    "type": "Rule",
                    "desc": "The agent's hooks must stay attached and its maps must hold what it put there",
                },
            },
            "unmapped": { "monitor": { "integrity": problems } },
        }),
    )
}

/// A Detection Finding for a fleet campaign: one new behaviour first seen
/// on many hosts within minutes, the hosts named as its resources.
pub fn campaign_finding(campaign: &Campaign, host: &Host) -> Value {
    let title = campaign.summary();
    let first = campaign.hosts.first().map_or(0, |h| ms(h.1));
    let last = campaign.hosts.last().map_or(0, |h| ms(h.1));
    let hosts: Vec<String> = campaign.hosts.iter().map(|h| h.0.clone()).collect();
    new_detection_finding(
        crate::event::Timestamp::now().as_millis(),
        4,
        &campaign.id,
        &title,
        host,
        json!({
            "start_time": first,
            "end_time": last,
            "finding_info": {
                "uid": campaign.id,
                "title": title,
                "desc": format!(
                    "{title}\n\nwhy it matters:\n  - the same behaviour, new to each of these hosts, appeared on {} of them within {}: automation is at work, an attacker's or a roll-out's\n\nnext steps:\n  - ask whether a deployment or package update ran on these hosts just now; if not, treat them as one incident\n  - open this host's finding {} for the process tree and the details",
                    hosts.len(),
                    humantime::format_duration(campaign.within),
                    campaign.finding
                ),
                "types": ["Fleet Campaign"],
                "related_events": [{ "uid": campaign.finding, "type": "finding" }],
                "first_seen_time": first,
                "last_seen_time": last,
                "analytic": {
                    "name": "monitor fleet campaign rule",
                    "type_id": 1,
                    "type": "Rule",
                    "desc": "One new behaviour first seen on at least fleet.campaign_hosts hosts within fleet.campaign_within",
                },
            },
            "resources": hosts.iter().map(|h| json!({ "name": h, "type": "host" })).collect::<Vec<_>>(),
            "unmapped": { "monitor": { "campaign": campaign } },
        }),
    )
}

/// An OCSF activity record for a raw event, if its kind has one.
pub fn activity(event: &Event, host: &Host) -> Option<Value> {
    let process_obj = event
        .process
        .as_ref()
        .map(|p| process(p, event.parent.as_deref(), &event.ancestry));
    let actor = json!({ "process": event.parent.as_ref().map_or_else(
        || process_obj.clone().unwrap_or(json!({"pid": 0})),
        |p| process(p, None, &[])) });
    let base = |class_uid: u32, class_name: &str, category: (u32, &str), activity: (u32, &str)| {
        json!({
            "class_uid": class_uid,
            "class_name": class_name,
            "category_uid": category.0,
            "category_name": category.1,
            "activity_id": activity.0,
            "activity_name": activity.1,
            "type_uid": class_uid * 100 + activity.0,
            "type_name": format!("{class_name}: {}", activity.1),
            "time": ms(event.time),
            "severity_id": 1,
            "severity": "Informational",
            "metadata": metadata(None),
            "device": host.device(),
        })
    };
    let system = (1, "System Activity");
    match &event.detail {
        Detail::Exec(_) | Detail::Exit(_) | Detail::Fork(_) => {
            let activity = match event.detail {
                Detail::Exit(_) => (2, "Terminate"),
                _ => (1, "Launch"),
            };
            let mut v = base(1007, "Process Activity", system, activity);
            v["process"] = process_obj?;
            v["actor"] = actor;
            if let Detail::Exit(x) = &event.detail {
                v["exit_code"] = json!(x.exit_code.unwrap_or(128 + x.signal.unwrap_or(0)));
            }
            v["unmapped"] = json!({ "monitor": &event.detail });
            Some(v)
        }
        Detail::Connect(n) | Detail::Accept(n) | Detail::Bind(n) | Detail::Listen(n) => {
            let (activity, direction) = match &event.detail {
                Detail::Connect(_) => ((1, "Open"), (2, "Outbound")),
                Detail::Accept(_) => ((1, "Open"), (1, "Inbound")),
                _ => ((7, "Listen"), (0, "Unknown")),
            };
            let mut v = base(4001, "Network Activity", (4, "Network Activity"), activity);
            let endpoint = |ip: &Option<String>, port: Option<u16>| {
                let mut e = serde_json::Map::new();
                if let Some(ip) = ip {
                    e.insert("ip".into(), json!(ip));
                }
                if let Some(port) = port {
                    e.insert("port".into(), json!(port));
                }
                if let Some(path) = &n.unix_path {
                    e.insert("name".into(), json!(path.to_string_lossy()));
                }
                if e.is_empty() {
                    e.insert("name".into(), json!(n.family));
                }
                Value::Object(e)
            };
            let remote = endpoint(&n.address, n.port);
            let local = endpoint(&n.local_address, n.local_port);
            match &event.detail {
                Detail::Connect(_) => v["dst_endpoint"] = remote,
                Detail::Accept(_) => {
                    v["src_endpoint"] = remote;
                    v["dst_endpoint"] = local;
                }
                _ => v["src_endpoint"] = remote,
            }
            v["connection_info"] = json!({
                "direction_id": direction.0,
                "direction": direction.1,
                "protocol_name": n.sock_type.as_deref().map_or("unknown", |t| if t == "stream" { "tcp" } else if t == "dgram" { "udp" } else { t }),
            });
            if let Some(p) = process_obj {
                v["actor"] = json!({ "process": p });
            }
            v["unmapped"] = json!({ "monitor": &event.detail });
            Some(v)
        }
        Detail::FileOpen(f)
        | Detail::FileUnlink(f)
        | Detail::FileRename(f)
        | Detail::FileLink(f)
        | Detail::FileSymlink(f) => {
            let activity = match &event.detail {
                Detail::FileUnlink(_) => (4, "Delete"),
                Detail::FileRename(_) => (5, "Rename"),
                Detail::FileLink(_) | Detail::FileSymlink(_) => (1, "Create"),
                _ if f.write => (3, "Update"),
                _ => (2, "Read"),
            };
            let mut v = base(1001, "File System Activity", system, activity);
            v["file"] = file_of(&f.path.to_string_lossy());
            v["actor"] = json!({ "process": process_obj? });
            v["unmapped"] = json!({ "monitor": &event.detail });
            Some(v)
        }
        _ => None,
    }
}

/// Lifecycle record kinds of the agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// The agent started.
    Start,
    /// The agent is stopping.
    Stop,
    /// Periodic: the agent is alive.
    Heartbeat,
    /// A problem (sink down, spool full, events lost).
    Health,
}

/// Repeats of an open finding, for its update record.
#[derive(Debug, Clone, PartialEq)]
pub struct RepeatTally {
    /// Windows that repeated it so far.
    pub repeats: u64,
    /// The first and the latest repeat.
    pub first: Timestamp,
    /// The latest repeat.
    pub last: Timestamp,
    /// The latest repeat's process.
    pub last_process: Option<Process>,
}

/// A Detection Finding *Update*: the finding seen again. Same
/// `finding_info.uid` as the finding, so a SIEM folds it into it; `count`
/// is the number of windows that showed it, the finding's included.
pub fn finding_update(finding: &Finding, tally: &RepeatTally, host: &Host) -> Value {
    let mut v = self::finding(finding, host);
    v["activity_id"] = json!(2);
    v["activity_name"] = json!("Update");
    v["type_uid"] = json!(200402);
    v["type_name"] = json!("Detection Finding: Update");
    v["status_id"] = json!(2);
    v["status"] = json!("In Progress");
    v["time"] = json!(ms(tally.last));
    v["end_time"] = json!(ms(tally.last));
    v["count"] = json!(tally.repeats + 1);
    v["finding_info"]["last_seen_time"] = json!(ms(tally.last));
    let by = tally.last_process.as_ref().map_or_else(String::new, |p| {
        format!(
            " (latest: {} pid {} uid {})",
            p.exe.as_ref().map_or_else(
                || p.comm.to_string_lossy().into_owned(),
                |e| e.to_string_lossy().into_owned()
            ),
            p.pid,
            p.uid
        )
    });
    v["message"] = json!(format!(
        "seen again {} time{} since it was raised{by}: {}",
        tally.repeats,
        if tally.repeats == 1 { "" } else { "s" },
        finding.summary
    ));
    v["unmapped"]["monitor"]["repeats"] = json!({
        "count": tally.repeats, "first": tally.first, "last": tally.last,
    });
    v
}

/// An Application Lifecycle record about the agent.
pub fn lifecycle(kind: Lifecycle, host: &Host, message: &str, details: Value) -> Value {
    let (activity_id, activity_name, severity_id, severity) = match kind {
        Lifecycle::Start => (3, "Start", 1, "Informational"),
        Lifecycle::Stop => (4, "Stop", 1, "Informational"),
        Lifecycle::Heartbeat => (99, "Heartbeat", 1, "Informational"),
        Lifecycle::Health => (99, "Health", 3, "Medium"),
    };
    json!({
        "class_uid": 6002,
        "class_name": "Application Lifecycle",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": 600200 + activity_id,
        "type_name": format!("Application Lifecycle: {activity_name}"),
        "time": crate::event::Timestamp::now().as_millis(),
        "severity_id": severity_id,
        "severity": severity,
        "message": message,
        "metadata": metadata(None),
        "device": host.device(),
        "app": { "name": PRODUCT, "vendor_name": PRODUCT, "version": env!("CARGO_PKG_VERSION") },
        "unmapped": { "monitor": details },
    })
}

/// Byte strings that are not UTF-8 as OCSF strings. The agent's own JSON
/// writes them as `{"text": ..., "base64": ...}` (`crate::event::bytes`),
/// which inside `unmapped` made a field a string in one record and an
/// object in the next, and Elasticsearch refuses the second. Here each
/// becomes a string, escaped losslessly (`\xNN` for a byte that is not
/// UTF-8, `\\` for a backslash), with the exact bytes in a sibling field
/// `<name>_base64` (for a list, a list of the same length, `null` where the
/// item was UTF-8).
pub fn strings_only(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut siblings = Vec::new();
            for (key, value) in map.iter_mut() {
                match value {
                    Value::Array(items) if items.iter().any(|i| as_bytes(i).is_some()) => {
                        let raw: Vec<Value> = items
                            .iter_mut()
                            .map(|i| match as_bytes(i) {
                                Some((text, b64)) => {
                                    *i = Value::String(text);
                                    Value::String(b64)
                                }
                                None => Value::Null,
                            })
                            .collect();
                        siblings.push((format!("{key}_base64"), Value::Array(raw)));
                    }
                    _ => {
                        if let Some((text, b64)) = as_bytes(value) {
                            *value = Value::String(text);
                            siblings.push((format!("{key}_base64"), Value::String(b64)));
                        } else {
                            strings_only(value);
                        }
                    }
                }
            }
            map.extend(siblings);
        }
        Value::Array(items) => items.iter_mut().for_each(strings_only),
        _ => {}
    }
}

/// The escaped text and base64 of a `{"text", "base64"}` byte string.
fn as_bytes(v: &Value) -> Option<(String, String)> {
    use base64::Engine as _;
    let Value::Object(o) = v else { return None };
    if o.len() != 2 || !o.get("text").is_some_and(Value::is_string) {
        return None;
    }
    let b64 = o.get("base64")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let mut text = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        text.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
    Some((text, b64.to_owned()))
}

/// The id (`metadata.uid`) of a record, if it has one: a finding's uid,
/// which sinks use to make a record sent twice stored once.
pub fn record_uid(payload: &[u8]) -> Option<String> {
    // Only the one field is kept: the rest is skipped, not built (a
    // finding is about 7 KB, and the NATS sink asks this of every record).
    #[derive(serde::Deserialize)]
    struct Record {
        metadata: Option<Metadata>,
    }
    #[derive(serde::Deserialize)]
    struct Metadata {
        uid: Option<String>,
    }
    serde_json::from_slice::<Record>(payload)
        .ok()?
        .metadata?
        .uid
}

#[cfg(test)]
mod strings_only_tests {
    use serde_json::json;

    use crate::event::ByteString;

    #[test]
    fn names_that_are_not_utf8_are_strings_with_their_bytes_beside() {
        let name = ByteString::from(&b"evil\xff\\name"[..]);
        let arg = ByteString::from(&b"\xc3(x"[..]);
        let mut v = json!({
            "unmapped": { "monitor": { "process": {
                "comm": name,
                "exe": ByteString::from("/usr/bin/ok"),
                "args": [ByteString::from("ok"), arg],
            } } }
        });
        super::strings_only(&mut v);
        let p = &v["unmapped"]["monitor"]["process"];
        assert_eq!(p["comm"], "evil\\xff\\\\name");
        assert_eq!(p["exe"], "/usr/bin/ok");
        assert!(p.get("exe_base64").is_none());
        assert_eq!(p["args"], json!(["ok", "\\xc3(x"]));
        // The exact bytes come back from the sibling fields.
        let back: ByteString =
            serde_json::from_value(json!({ "text": "", "base64": p["comm_base64"] })).unwrap();
        assert_eq!(back.as_bytes(), b"evil\xff\\name");
        assert_eq!(p["args_base64"][0], serde_json::Value::Null);
        assert!(p["args_base64"][1].is_string());
    }
}
