//! What the fleet says of a finding (with a `[fleet]` configured): data
//! only, carried on the finding; `crate::fleet` fills it in.

use serde::{Deserialize, Serialize};

use super::guidance::Severity;

/// One fact's prevalence, on the finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactPrevalence {
    /// The fact's id.
    pub fact: String,
    /// Its kind.
    pub kind: String,
    /// What it is (the value the finding already shows).
    pub value: String,
    /// Hosts that saw it in the window, this one included.
    pub hosts: usize,
}

/// What the fleet says of a finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetContext {
    /// For people: "first in the fleet", "seen on 37 of 40 hosts in the
    /// last 24h", or why the fleet could not be asked.
    pub text: String,
    /// Hosts that saw its least common fact in the window, this one
    /// included (0 when the fleet could not be asked).
    pub hosts: usize,
    /// Hosts that reported to the fleet in the window.
    pub fleet_hosts: usize,
    /// The window, as written in the configuration.
    pub window: String,
    /// Each fact's prevalence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<FactPrevalence>,
    /// The severity the finding had before the fleet lowered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowered_from: Option<Severity>,
    /// The fleet campaign this finding is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// Why the fleet could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}
