//! Novelty facts and what the fleet makes of them, with no network: which
//! facts a finding carries, how a fact is named so that the cluster learns
//! nothing it was not told, and, from the sightings other hosts shared, a
//! fact's prevalence and whether it is a campaign.
//!
//! A fact is "this program did this new thing": the program's path, the
//! novelty's kind and its value (a path, a peer, a syscall...). Its id is a
//! keyed hash (HMAC-SHA-256 under the fleet's key, cut to 128 bits), so
//! anyone who reads the bucket without the key cannot test guesses of which
//! paths or peers a host saw; without a key it is a plain SHA-256, which
//! hides nothing from someone who can guess (the docs say so).

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::model::fleet_context::{FactPrevalence, FleetContext};
use crate::{
    event::Timestamp,
    model::{baseline::NoveltyKind, finding::Finding, guidance::Severity},
};

/// Facts taken from one finding, at most: a finding with more novelty
/// than this is judged by its first (most important) facts.
pub const MAX_FACTS: usize = 8;

/// How far ahead of a finding another host's clock may be and its sighting
/// still count as "before" it.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Names facts: HMAC-SHA-256 under the fleet key, or SHA-256 without one.
#[derive(Clone)]
pub struct FactNamer {
    key: Option<ring::hmac::Key>,
}

impl std::fmt::Debug for FactNamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactNamer")
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

impl FactNamer {
    /// A namer with `key` (the fleet's shared secret), or none.
    pub fn new(key: Option<&[u8]>) -> Self {
        Self {
            key: key.map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)),
        }
    }

    /// The id of "`program` did `kind` `value`": 32 hex digits.
    pub fn id(&self, program: &str, kind: &str, value: &str) -> String {
        // Lengths first, so no two (program, kind, value) make the same input.
        let mut input = Vec::with_capacity(program.len() + kind.len() + value.len() + 24);
        for part in [program, kind, value] {
            input.extend_from_slice(&(part.len() as u64).to_le_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        let digest: Vec<u8> = match &self.key {
            Some(key) => ring::hmac::sign(key, &input).as_ref().to_vec(),
            None => ring::digest::digest(&ring::digest::SHA256, &input)
                .as_ref()
                .to_vec(),
        };
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One fact of a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// Its keyed id.
    pub id: String,
    /// The novelty kind (`new_child_program`), or `deviation` for a finding
    /// with nothing new, only counts far from usual.
    pub kind: String,
    /// The program.
    pub program: String,
    /// What was new, or the deviating features.
    pub value: String,
}

/// The facts of a finding, most important first, at most [`MAX_FACTS`].
/// A finding with no novelty has one fact: its program and the features
/// that deviated (so the same drift on many hosts is one fact).
pub fn facts_of(finding: &Finding, namer: &FactNamer) -> Vec<Fact> {
    let make = |kind: String, value: String| Fact {
        id: namer.id(&finding.program, &kind, &value),
        kind,
        program: finding.program.clone(),
        value,
    };
    let mut facts: Vec<Fact> = finding
        .novelty
        .iter()
        .take(MAX_FACTS)
        .map(|n| make(kind_name(n.kind), n.value.clone()))
        .collect();
    if facts.is_empty() {
        let mut features: Vec<&str> = finding
            .deviations
            .iter()
            .take(3)
            .map(|d| d.feature.as_str())
            .collect();
        features.sort_unstable();
        let value = if features.is_empty() {
            "call order".to_owned()
        } else {
            features.join(",")
        };
        facts.push(make("deviation".into(), value));
    }
    facts
}

fn kind_name(kind: NoveltyKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// One host's sighting of a fact, as stored in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    /// The host.
    pub host: String,
    /// When it first saw the fact (the finding's time).
    pub first_seen: Timestamp,
    /// When it last saw it.
    pub last_seen: Timestamp,
    /// The novelty kind (not secret: `new_child_program`...).
    pub kind: String,
    /// The program, only when the fleet shares details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// What was new, only when the fleet shares details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A host's presence in the fleet, as stored in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// The host.
    pub host: String,
    /// When it last said it is there.
    pub last_seen: Timestamp,
}

/// How the fleet judges facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Prevalence counts sightings this recent.
    pub window: Duration,
    /// A campaign: a fact first seen on at least this many hosts...
    pub campaign_hosts: usize,
    /// ...within this long.
    pub campaign_within: Duration,
    /// Lower a finding's severity by one level when its least common fact
    /// is on at least this share of the fleet's hosts (0 < x <= 1), or
    /// never (`None`).
    pub lower_at: Option<f64>,
    /// ...and on at least this many hosts.
    pub lower_min_hosts: usize,
}

impl Default for Judgement {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(86_400),
            campaign_hosts: 5,
            campaign_within: Duration::from_secs(600),
            lower_at: Some(0.5),
            lower_min_hosts: 3,
        }
    }
}

/// The context of a finding the fleet could not be asked about.
pub fn unavailable(why: String, window: Duration) -> FleetContext {
    FleetContext {
        text: format!("fleet prevalence unknown: {why}"),
        hosts: 0,
        fleet_hosts: 0,
        window: span(window),
        facts: Vec::new(),
        lowered_from: None,
        campaign: None,
        unavailable: Some(why),
    }
}

/// A fleet campaign: one new fact first seen on many hosts in a short time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// Stable id: the fact and the first host's first sighting.
    pub id: String,
    /// The fact's id.
    pub fact: String,
    /// The fact's novelty kind (`kind` is the record's own tag in output).
    pub fact_kind: String,
    /// The program (from this host's finding).
    pub program: String,
    /// What was new.
    pub value: String,
    /// The hosts, earliest first, with when each first saw it.
    pub hosts: Vec<(String, Timestamp)>,
    /// The span the campaign rule looks at.
    pub within: Duration,
    /// The finding on this host that completed it.
    pub finding: String,
}

impl Campaign {
    /// One line for people.
    pub fn summary(&self) -> String {
        let name = self.program.rsplit('/').next().unwrap_or(&self.program);
        let first = self.hosts.first().map_or(Timestamp(0), |h| h.1);
        let last = self.hosts.last().map_or(Timestamp(0), |h| h.1);
        format!(
            "fleet campaign: {name} {} {} on {} hosts within {} ({})",
            kind_phrase(&self.fact_kind),
            crate::display::printable(&self.value),
            self.hosts.len(),
            humantime::format_duration(Duration::from_secs(last.since(first).as_secs())),
            self.hosts
                .iter()
                .map(|h| crate::display::printable(&h.0))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn kind_phrase(kind: &str) -> &str {
    match kind {
        "new_child_program" => "started a new program",
        "new_executable" => "ran a new executable",
        "new_parent_child" => "was started by a new parent",
        "new_peer" => "talked to a new peer",
        "new_listening_port" => "listened on a new port",
        "new_sensitive_path" => "touched a new sensitive path",
        "new_action" => "did a new security-relevant action",
        "new_syscall" => "made a new system call",
        "deviation" => "deviated in",
        _ => "did something new:",
    }
}

/// What a judgement of one finding gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The finding's fleet context.
    pub context: FleetContext,
    /// A campaign this finding completes, if it does (the caller decides,
    /// with the cluster, whether it was already raised).
    pub campaign: Option<Campaign>,
}

/// A window as people write it: whole hours as hours ("24h").
fn span(d: Duration) -> String {
    if d.as_secs().is_multiple_of(3600) && d.subsec_nanos() == 0 && d.as_secs() > 0 {
        format!("{}h", d.as_secs() / 3600)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Hosts whose sighting counts for a finding at `at`: seen in the window
/// before it (give or take another host's clock).
fn in_window(s: &Sighting, at: Timestamp, window: Duration) -> bool {
    s.first_seen <= at.plus(CLOCK_SLACK) && s.last_seen.plus(window) >= at
}

/// Judges a finding at `at` whose facts were seen as `sightings` (one list
/// per fact, every host's, this one's included), in a fleet whose hosts'
/// presences are `fleet`. Pure: the caller fetched everything.
pub fn judge(
    facts: &[Fact],
    sightings: &[Vec<Sighting>],
    fleet: &[Presence],
    at: Timestamp,
    severity: Severity,
    rule: &Judgement,
) -> Verdict {
    let mut per_fact = Vec::with_capacity(facts.len());
    let mut campaign: Option<Campaign> = None;
    // Seen first on another host within the campaign span: spreading now,
    // whatever the count; such a fact is never made less urgent.
    let mut spreading = false;
    for (fact, seen) in facts.iter().zip(sightings) {
        let mut hosts: Vec<&Sighting> = seen
            .iter()
            .filter(|s| in_window(s, at, rule.window))
            .collect();
        hosts.sort_by(|a, b| (a.first_seen, &a.host).cmp(&(b.first_seen, &b.host)));
        hosts.dedup_by(|a, b| a.host == b.host);
        per_fact.push(FactPrevalence {
            fact: fact.id.clone(),
            kind: fact.kind.clone(),
            value: fact.value.clone(),
            hosts: hosts.len(),
        });
        spreading |= hosts
            .iter()
            .filter(|s| recent(s, at, rule.campaign_within))
            .count()
            >= 2;
        if campaign.is_none() {
            campaign = campaign_of(fact, &hosts, at, rule);
        }
    }
    let hosts = per_fact.iter().map(|f| f.hosts).min().unwrap_or(0).max(1);
    let mut fleet_hosts = fleet
        .iter()
        .filter(|p| p.last_seen.plus(rule.window) >= at && p.last_seen <= at.plus(CLOCK_SLACK))
        .count();
    // A host that saw the fact was in the fleet, whether or not its
    // presence is still in the bucket.
    fleet_hosts = fleet_hosts.max(hosts);
    let window = span(rule.window);
    let text = if hosts <= 1 {
        format!(
            "first in the fleet ({fleet_hosts} host{} in the last {window})",
            if fleet_hosts == 1 { "" } else { "s" }
        )
    } else {
        format!("seen on {hosts} of {fleet_hosts} hosts in the last {window}")
    };
    let lowered = !spreading
        && rule.lower_at.is_some_and(|share| {
            hosts >= rule.lower_min_hosts && hosts as f64 >= share * fleet_hosts as f64
        })
        && severity != Severity::Low;
    Verdict {
        context: FleetContext {
            text,
            hosts,
            fleet_hosts,
            window,
            facts: per_fact,
            lowered_from: lowered.then_some(severity),
            campaign: campaign.as_ref().map(|c| c.id.clone()),
            unavailable: None,
        },
        campaign,
    }
}

/// Whether `s` was first seen within `span` before `at`.
fn recent(s: &Sighting, at: Timestamp, span: Duration) -> bool {
    s.first_seen.plus(span) >= at && s.first_seen <= at.plus(CLOCK_SLACK)
}

/// The campaign `fact` completes at `at`, if it is first seen on at least
/// `campaign_hosts` hosts within `campaign_within` ending at `at`.
fn campaign_of(
    fact: &Fact,
    hosts: &[&Sighting],
    at: Timestamp,
    rule: &Judgement,
) -> Option<Campaign> {
    let recent: Vec<&Sighting> = hosts
        .iter()
        .copied()
        .filter(|s| recent(s, at, rule.campaign_within))
        .collect();
    if recent.len() < rule.campaign_hosts.max(2) {
        return None;
    }
    let first = recent[0];
    let id = crate::hash::sha256_hex(
        format!(
            "campaign\0{}\0{}\0{}",
            fact.id, first.host, first.first_seen.0
        )
        .as_bytes(),
    )[..32]
        .to_owned();
    Some(Campaign {
        id,
        fact: fact.id.clone(),
        fact_kind: fact.kind.clone(),
        program: fact.program.clone(),
        value: fact.value.clone(),
        hosts: recent
            .iter()
            .map(|s| (s.host.clone(), s.first_seen))
            .collect(),
        within: rule.campaign_within,
        finding: String::new(),
    })
}

/// Lowers a severity by one level (never below low).
pub fn lowered(severity: Severity) -> Severity {
    match severity {
        Severity::Critical => Severity::High,
        Severity::High => Severity::Medium,
        Severity::Medium | Severity::Low => Severity::Low,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60 * 1_000_000_000;

    fn fact() -> Fact {
        Fact {
            id: FactNamer::new(Some(b"k")).id("/usr/bin/python3", "new_child_program", "/bin/sh"),
            kind: "new_child_program".into(),
            program: "/usr/bin/python3".into(),
            value: "/bin/sh".into(),
        }
    }

    fn seen(host: &str, minute: u64) -> Sighting {
        Sighting {
            host: host.into(),
            first_seen: Timestamp(minute * MIN),
            last_seen: Timestamp(minute * MIN),
            kind: "new_child_program".into(),
            program: None,
            value: None,
        }
    }

    fn fleet(n: usize, minute: u64) -> Vec<Presence> {
        (0..n)
            .map(|i| Presence {
                host: format!("h{i}"),
                last_seen: Timestamp(minute * MIN),
            })
            .collect()
    }

    #[test]
    fn a_fact_id_is_keyed_and_does_not_run_parts_together() {
        let keyed = FactNamer::new(Some(b"fleet secret"));
        let other = FactNamer::new(Some(b"another secret"));
        let plain = FactNamer::new(None);
        let id = keyed.id("/bin/a", "new_peer", "10.0.0.1:443");
        assert_eq!(id.len(), 32);
        assert_eq!(id, keyed.id("/bin/a", "new_peer", "10.0.0.1:443"));
        assert_ne!(id, other.id("/bin/a", "new_peer", "10.0.0.1:443"));
        assert_ne!(id, plain.id("/bin/a", "new_peer", "10.0.0.1:443"));
        assert_ne!(
            keyed.id("/bin/ab", "c", "d"),
            keyed.id("/bin/a", "bc", "d"),
            "lengths keep the parts apart"
        );
    }

    #[test]
    fn prevalence_counts_hosts_in_the_window_and_says_first_in_the_fleet() {
        let rule = Judgement::default();
        let f = fact();
        let v = judge(
            std::slice::from_ref(&f),
            &[vec![seen("a", 1000)]],
            &fleet(40, 1000),
            Timestamp(1000 * MIN),
            Severity::High,
            &rule,
        );
        assert_eq!(v.context.hosts, 1);
        assert!(
            v.context.text.starts_with("first in the fleet (40 hosts"),
            "{}",
            v.context.text
        );
        assert!(v.campaign.is_none() && v.context.lowered_from.is_none());

        // 37 hosts over the last day, one of them 25 hours ago (not counted),
        // two more a minute each: a roll-out, not a campaign.
        let mut sightings: Vec<Sighting> = (0..36)
            .map(|i| seen(&format!("h{i}"), 2000 - 40 * i as u64))
            .collect();
        sightings.push(seen("old", 2000 - 25 * 60));
        let v = judge(
            &[f],
            &[sightings],
            &fleet(40, 2000),
            Timestamp(2000 * MIN),
            Severity::High,
            &rule,
        );
        assert_eq!(v.context.text, "seen on 36 of 40 hosts in the last 24h");
        assert!(v.campaign.is_none(), "spread over a day: {:?}", v.campaign);
        assert_eq!(
            v.context.lowered_from,
            Some(Severity::High),
            "common across the fleet: lowered one level"
        );
    }

    #[test]
    fn five_hosts_in_ten_minutes_are_a_campaign_naming_them_and_never_lowered() {
        let rule = Judgement::default();
        let sightings: Vec<Sighting> = ["web1", "web2", "db1", "web3", "app7"]
            .iter()
            .enumerate()
            .map(|(i, h)| seen(h, 500 + 2 * i as u64))
            .collect();
        // Four of five: not yet.
        let v = judge(
            &[fact()],
            &[sightings[..4].to_vec()],
            &fleet(6, 506),
            Timestamp(506 * MIN),
            Severity::High,
            &rule,
        );
        assert!(v.campaign.is_none());
        let v = judge(
            &[fact()],
            std::slice::from_ref(&sightings),
            &fleet(6, 508),
            Timestamp(508 * MIN),
            Severity::High,
            &rule,
        );
        let c = v.campaign.expect("a campaign");
        assert_eq!(
            c.hosts.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
            ["web1", "web2", "db1", "web3", "app7"]
        );
        assert_eq!(v.context.campaign.as_deref(), Some(c.id.as_str()));
        assert_eq!(v.context.lowered_from, None, "5 of 6 hosts, but a campaign");
        assert!(
            c.summary()
                .starts_with("fleet campaign: python3 started a new program /bin/sh on 5 hosts within 8m (web1, web2"),
            "{}",
            c.summary()
        );
        // The same five spread over an hour: no campaign.
        let slow: Vec<Sighting> = sightings
            .iter()
            .enumerate()
            .map(|(i, s)| seen(&s.host, 500 + 15 * i as u64))
            .collect();
        let v = judge(
            &[fact()],
            &[slow],
            &fleet(6, 560),
            Timestamp(560 * MIN),
            Severity::High,
            &rule,
        );
        assert!(v.campaign.is_none());
    }

    #[test]
    fn lowering_is_one_level_never_below_low_and_can_be_off() {
        assert_eq!(lowered(Severity::Critical), Severity::High);
        assert_eq!(lowered(Severity::Low), Severity::Low);
        let rule = Judgement {
            lower_at: None,
            ..Judgement::default()
        };
        let all: Vec<Sighting> = (0..10)
            .map(|i| seen(&format!("h{i}"), 100 * i as u64))
            .collect();
        let v = judge(
            &[fact()],
            &[all],
            &fleet(10, 900),
            Timestamp(900 * MIN),
            Severity::High,
            &rule,
        );
        assert_eq!(v.context.hosts, 10);
        assert_eq!(v.context.lowered_from, None);
    }
}
