//! What a finding's evidence usually means, and what to do next.
//!
//! The model says *that* a window is unlike the baseline and *how*; people
//! on call also need *why it matters* and *where to look first*. This table
//! maps the evidence (novelty facts, the actions and paths behind them) to
//! MITRE ATT&CK techniques that commonly produce it, one sentence on why it
//! matters, and a first step. It never decides whether to finding: that stays
//! with the calibrated score.

use serde::{Deserialize, Serialize};

use super::baseline::{Novelty, NoveltyKind};

/// An ATT&CK technique a finding's evidence is typical of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Technique {
    /// Technique id (`T1059.004`).
    pub id: String,
    /// Technique name.
    pub name: String,
    /// Tactic name (`Execution`).
    pub tactic: String,
    /// Tactic id (`TA0002`).
    pub tactic_id: String,
}

/// The ATT&CK id of a tactic name used in the rules.
fn tactic_id(tactic: &str) -> &'static str {
    match tactic {
        "Execution" => "TA0002",
        "Persistence" => "TA0003",
        "Privilege Escalation" => "TA0004",
        "Defense Evasion" => "TA0005",
        "Credential Access" => "TA0006",
        "Discovery" => "TA0007",
        "Command and Control" => "TA0011",
        "Impact" => "TA0040",
        _ => "",
    }
}

/// Guidance for one finding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Guidance {
    /// Techniques the evidence is typical of (may be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub techniques: Vec<Technique>,
    /// Why it matters, one sentence per piece of evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
    /// Suggested first steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_steps: Vec<String>,
    /// `critical`, `high`, `medium` or `low`.
    pub severity: Severity,
}

/// How urgently a person should look.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Unusual, nothing known-dangerous.
    #[default]
    Low,
    /// Unusual with a security-relevant fact.
    Medium,
    /// Evidence typical of an intrusion step.
    High,
    /// Evidence typical of credential theft, tampering with defences, or
    /// code running from memory.
    Critical,
}

impl Severity {
    /// The OCSF `severity_id` (1 informational .. 5 critical).
    pub fn ocsf_id(self) -> u8 {
        match self {
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
            Severity::Critical => 5,
        }
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

struct Rule {
    /// Does this rule match the fact?
    matches: fn(&Novelty) -> bool,
    technique: (&'static str, &'static str, &'static str),
    why: &'static str,
    next: &'static str,
    severity: Severity,
}

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox",
];
const DISCOVERY: &[&str] = &[
    "id", "whoami", "uname", "hostname", "ps", "ss", "netstat", "ip", "ifconfig", "w", "who",
    "last", "lsof", "getent", "cat", "ls", "find",
];
const DOWNLOADERS: &[&str] = &[
    "curl", "wget", "nc", "ncat", "socat", "python3", "python", "perl",
];

fn base_name(path: &str) -> &str {
    // `parent -> program` pairs: judge the program.
    let program = path.rsplit(" -> ").next().unwrap_or(path);
    program.rsplit('/').next().unwrap_or(program)
}

fn is_child(n: &Novelty) -> bool {
    matches!(
        n.kind,
        NoveltyKind::NewChildProgram | NoveltyKind::NewParentChild
    )
}

fn is_temp_path(path: &str) -> bool {
    let program = path.rsplit(" -> ").next().unwrap_or(path);
    ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/"]
        .iter()
        .any(|p| program.starts_with(p))
}

fn path_has(n: &Novelty, parts: &[&str]) -> bool {
    n.kind == NoveltyKind::NewSensitivePath && parts.iter().any(|p| n.value.contains(p))
}

fn action_is(n: &Novelty, prefixes: &[&str]) -> bool {
    n.kind == NoveltyKind::NewAction && prefixes.iter().any(|p| n.value.starts_with(p))
}

const RULES: &[Rule] = &[
    Rule {
        matches: |n| {
            action_is(
                n,
                &[
                    "signal_to_the_agent",
                    "ptrace_of_the_agent",
                    "bpf_on_the_agent",
                ],
            ) || path_has(n, &["/var/lib/monitor"])
        },
        technique: (
            "T1562.001",
            "Impair Defenses: Disable or Modify Tools",
            "Defense Evasion",
        ),
        why: "something aimed at the monitoring agent itself: blinding the sensor usually comes right before the real attack",
        next: "find who sent it (process tree above) and check the agent is still healthy (`monitor status`)",
        severity: Severity::Critical,
    },
    Rule {
        matches: |n| is_child(n) && SHELLS.contains(&base_name(&n.value)),
        technique: (
            "T1059.004",
            "Command and Scripting Interpreter: Unix Shell",
            "Execution",
        ),
        why: "a process that never ran a shell started one: the usual first step after exploiting a service",
        next: "read the shell's command line and children in the process tree; check the parent service's recent requests and logs",
        severity: Severity::High,
    },
    Rule {
        matches: |n| is_child(n) && DISCOVERY.contains(&base_name(&n.value)),
        technique: ("T1082", "System Information Discovery", "Discovery"),
        why: "new discovery commands (who am I, what runs here, what is on the network) are how an intruder orients",
        next: "list every program this process tree started in the last minutes",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| is_child(n) && is_temp_path(&n.value),
        technique: ("T1105", "Ingress Tool Transfer", "Command and Control"),
        why: "a program ran from a temporary, world-writable directory, typical of a downloaded payload",
        next: "hash the file and keep a copy before it disappears; find which process wrote it",
        severity: Severity::High,
    },
    Rule {
        matches: |n| is_child(n) && DOWNLOADERS.contains(&base_name(&n.value)),
        technique: ("T1105", "Ingress Tool Transfer", "Command and Control"),
        why: "a process started a tool that fetches or relays data over the network for the first time",
        next: "read the tool's arguments for a URL or address and check that peer",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| path_has(n, &["/etc/shadow", "/etc/gshadow", "/etc/security/opasswd"]),
        technique: (
            "T1003.008",
            "OS Credential Dumping: /etc/passwd and /etc/shadow",
            "Credential Access",
        ),
        why: "password hashes were read by a program that never read them: offline cracking is the usual next step",
        next: "confirm who ran it; if not an administrator, rotate the affected passwords",
        severity: Severity::Critical,
    },
    Rule {
        matches: |n| path_has(n, &["/.ssh/id_", "/ssh_host_", "_key", ".pem"]),
        technique: (
            "T1552.004",
            "Unsecured Credentials: Private Keys",
            "Credential Access",
        ),
        why: "a private key was read by a program that never read it",
        next: "treat the key as exposed: check where it grants access and rotate it",
        severity: Severity::Critical,
    },
    Rule {
        matches: |n| path_has(n, &["authorized_keys"]),
        technique: (
            "T1098.004",
            "Account Manipulation: SSH Authorized Keys",
            "Persistence",
        ),
        why: "an SSH authorized_keys file was touched: a new key there is a permanent way back in",
        next: "diff the file against its last known content and remove keys nobody owns",
        severity: Severity::High,
    },
    Rule {
        matches: |n| path_has(n, &["cron", "/var/spool/at"]),
        technique: ("T1053.003", "Scheduled Task/Job: Cron", "Persistence"),
        why: "a scheduled job location was touched: jobs run again after a reboot or a cleanup",
        next: "list new or changed cron entries and what they run",
        severity: Severity::High,
    },
    Rule {
        matches: |n| path_has(n, &["/systemd/", ".service", ".timer"]),
        technique: (
            "T1543.002",
            "Create or Modify System Process: Systemd Service",
            "Persistence",
        ),
        why: "a systemd unit location was touched: a unit starts its program at every boot",
        next: "check new or changed units (`systemctl list-unit-files --state=enabled`) and what they execute",
        severity: Severity::High,
    },
    Rule {
        matches: |n| {
            path_has(
                n,
                &["/var/log/", "wtmp", "btmp", "lastlog", ".bash_history"],
            )
        },
        technique: ("T1070", "Indicator Removal", "Defense Evasion"),
        why: "logs or shell history were changed by a program that never changed them",
        next: "compare with the copies your log shipper already holds; look for truncation or deletion",
        severity: Severity::High,
    },
    Rule {
        matches: |n| path_has(n, &["/etc/sudoers", "/etc/passwd", "/etc/group"]),
        technique: (
            "T1548",
            "Abuse Elevation Control Mechanism",
            "Privilege Escalation",
        ),
        why: "account or sudo configuration was touched by a program that never touched it",
        next: "diff the file against its last known content",
        severity: Severity::High,
    },
    Rule {
        matches: |n| action_is(n, &["memfd_create", "fileless_exec", "exec_memory"]),
        technique: ("T1620", "Reflective Code Loading", "Defense Evasion"),
        why: "code ran from memory rather than from a file on disk, which hides it from file scanners",
        next: "capture the process memory (`gcore PID`) before stopping it; it leaves no file behind",
        severity: Severity::Critical,
    },
    Rule {
        matches: |n| action_is(n, &["ptrace"]),
        technique: (
            "T1055.008",
            "Process Injection: Ptrace System Calls",
            "Defense Evasion",
        ),
        why: "a process attached to another with ptrace: debuggers do it, so does code injection and credential theft from memory",
        next: "identify the target process; if it is not a developer debugging, stop both",
        severity: Severity::High,
    },
    Rule {
        matches: |n| action_is(n, &["bpf_load", "module_load"]),
        technique: (
            "T1562.001",
            "Impair Defenses: Disable or Modify Tools",
            "Defense Evasion",
        ),
        why: "kernel code was loaded (a BPF program or a module) by a program that never loaded any: rootkits and sensor blinding start here",
        next: "list loaded BPF programs (`bpftool prog`) and modules; compare with the host's build",
        severity: Severity::Critical,
    },
    Rule {
        matches: |n| action_is(n, &["signal:"]),
        technique: ("T1489", "Service Stop", "Impact"),
        why: "a process signalled another it never signalled",
        next: "check which process received it and whether it was a service or a security tool",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| {
            action_is(
                n,
                &[
                    "setuid",
                    "setgid",
                    "setreuid",
                    "setresuid",
                    "setregid",
                    "setresgid",
                    "capset",
                    "setfsuid",
                ],
            )
        },
        technique: (
            "T1548",
            "Abuse Elevation Control Mechanism",
            "Privilege Escalation",
        ),
        why: "a process changed its identity in a way it never did",
        next: "check the identity before and after in the process details",
        severity: Severity::High,
    },
    Rule {
        matches: |n| n.kind == NoveltyKind::NewPeer,
        technique: ("T1071", "Application Layer Protocol", "Command and Control"),
        why: "a process contacted a peer it never contacted: command-and-control and exfiltration both need one",
        next: "look the peer up in your network logs and threat intelligence",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| n.kind == NoveltyKind::NewListeningPort,
        technique: ("T1571", "Non-Standard Port", "Command and Control"),
        why: "a process listened on a port it never used: bind shells and backdoors listen",
        next: "check what is connected to the port (`ss -tnp`)",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| action_is(n, &["process_vm_writev", "pidfd_getfd"]),
        technique: ("T1055", "Process Injection", "Defense Evasion"),
        why: "a process wrote into another process's memory or took one of its file descriptors: code injection and handle theft look like this",
        next: "identify the target process (the action's pid) and what it runs; stop both if it is not a debugger or a supervisor",
        severity: Severity::High,
    },
    Rule {
        matches: |n| action_is(n, &["process_vm_readv"]),
        technique: ("T1003", "OS Credential Dumping", "Credential Access"),
        why: "a process read another process's memory: secrets and keys live there",
        next: "identify the target process; if it holds credentials (sshd, a browser, an agent), rotate them",
        severity: Severity::High,
    },
    Rule {
        matches: |n| action_is(n, &["mount", "umount2", "pivot_root", "setns", "unshare"]),
        technique: ("T1611", "Escape to Host", "Privilege Escalation"),
        why: "a process changed its mounts or namespaces, which it never did: container escapes and hiding files under a mount look like this",
        next: "check the process's namespaces (`ls -l /proc/PID/ns`) and mounts (`/proc/PID/mountinfo`) against its container",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| action_is(n, &["io_uring_setup"]),
        technique: ("T1562", "Impair Defenses", "Defense Evasion"),
        why: "io_uring performs file and network operations without the syscalls sensors watch; rootkits use it to stay unseen",
        next: "check why this program needs io_uring; if it never used it, inspect its files and connections (`ss`, `lsof`)",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| {
            action_is(
                n,
                &["rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal"],
            )
        },
        technique: ("T1489", "Service Stop", "Impact"),
        why: "a process queued a signal to another, which it never did",
        next: "check which process received it and whether it was a service or a security tool",
        severity: Severity::Medium,
    },
    Rule {
        matches: |n| action_is(n, &["file_link", "file_symlink"]),
        technique: (
            "T1222",
            "File and Directory Permissions Modification",
            "Defense Evasion",
        ),
        why: "a link was made into a sensitive place: a hard link keeps a sensitive file readable under another name, a symlink can redirect what a privileged program writes",
        next: "look at the link (`ls -li`) and what it points to; remove it if no one expects it",
        severity: Severity::High,
    },
    Rule {
        matches: |n| n.kind == NoveltyKind::ReplacedImage,
        technique: (
            "T1036.005",
            "Masquerading: Match Legitimate Name or Location",
            "Defense Evasion",
        ),
        why: "a program the host knows ran from a different file: a bind mount over its directory, a replaced binary, or a look-alike in another mount namespace",
        next: "compare the file's hash with the package's (`dpkg -V`, `rpm -V`); check the process's mount namespace and who created it",
        severity: Severity::High,
    },
    Rule {
        matches: |n| n.kind == NoveltyKind::CopiedImage,
        technique: (
            "T1036.003",
            "Masquerading: Rename System Utilities",
            "Defense Evasion",
        ),
        why: "a known program was copied and run under another name or from another place: renamed utilities slip past rules that watch names",
        next: "find who created the copy (its owner and time) and what the process did",
        severity: Severity::High,
    },
    Rule {
        matches: |n| action_is(n, &["map_exec_recently_written"]),
        technique: ("T1129", "Shared Modules", "Execution"),
        why: "a file written minutes ago was mapped into a process as code: a dropped library or payload being loaded",
        next: "keep a copy of the file before anything removes it, then find the process that wrote it (the event names its pid and uid)",
        severity: Severity::High,
    },
    Rule {
        matches: |n| action_is(n, &["exec_recently_written"]),
        technique: ("T1105", "Ingress Tool Transfer", "Command and Control"),
        why: "a program ran minutes after its file was written: dropped or downloaded tools are run this way",
        next: "keep a copy of the file, then find the process that wrote it and where the bytes came from",
        severity: Severity::High,
    },
    Rule {
        matches: |n| action_is(n, &["exec_world_writable_dir", "exec_memory_backed"]),
        technique: ("T1105", "Ingress Tool Transfer", "Command and Control"),
        why: "a program ran from a place anyone can write to, or from memory (/tmp, /dev/shm): downloaded tools are run from there",
        next: "find where the file came from (its owner, its creation time, the process that wrote it)",
        severity: Severity::High,
    },
    Rule {
        matches: |n| n.kind == NoveltyKind::NewExecutable,
        technique: ("T1204", "User Execution", "Execution"),
        why: "a program never seen on this host ran",
        next: "check where it came from (package, deployment, download) and its hash",
        severity: Severity::Medium,
    },
];

/// Guidance for a finding with these novelty facts.
pub fn for_novelty(novelty: &[Novelty]) -> Guidance {
    let mut g = Guidance::default();
    for n in novelty {
        for rule in RULES.iter().filter(|r| (r.matches)(n)) {
            let (id, name, tactic) = rule.technique;
            if !g.techniques.iter().any(|t| t.id == id) {
                g.techniques.push(Technique {
                    id: id.into(),
                    name: name.into(),
                    tactic: tactic.into(),
                    tactic_id: tactic_id(tactic).into(),
                });
                g.why.push(rule.why.into());
                g.next_steps.push(rule.next.into());
            }
            g.severity = g.severity.max(rule.severity);
        }
    }
    if g.why.is_empty() {
        g.why.push(if novelty.is_empty() {
            "the process did what it usually does in unusual proportions or order, which is how a hijacked process often looks".into()
        } else {
            "the process did something its baseline never showed".into()
        });
        g.next_steps.push("compare the deviating features with what the program is meant to do; if it is a change you expect, `monitor ack` it".into());
        if !novelty.is_empty() {
            g.severity = Severity::Medium;
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(kind: NoveltyKind, value: &str) -> Novelty {
        Novelty {
            kind,
            value: value.into(),
        }
    }

    #[test]
    fn shell_from_a_server_is_high_with_its_technique() {
        let g = for_novelty(&[fact(NoveltyKind::NewChildProgram, "/usr/bin/bash")]);
        assert_eq!(g.severity, Severity::High);
        assert_eq!(g.techniques[0].id, "T1059.004");
        assert_eq!(g.techniques[0].tactic_id, "TA0002");
        assert!(!g.next_steps.is_empty());
    }

    #[test]
    fn credential_files_are_critical() {
        let g = for_novelty(&[fact(NoveltyKind::NewSensitivePath, "/etc/shadow")]);
        assert_eq!(
            (g.severity, g.techniques[0].id.as_str()),
            (Severity::Critical, "T1003.008")
        );
        let g = for_novelty(&[fact(NoveltyKind::NewSensitivePath, "/root/.ssh/id_ed25519")]);
        assert_eq!(g.techniques[0].id, "T1552.004");
    }

    #[test]
    fn statistical_only_findings_still_say_what_to_do() {
        let g = for_novelty(&[]);
        assert_eq!(g.severity, Severity::Low);
        assert!(g.techniques.is_empty() && !g.why.is_empty() && !g.next_steps.is_empty());
    }

    #[test]
    fn every_rule_has_a_known_tactic() {
        for rule in RULES {
            assert!(
                !tactic_id(rule.technique.2).is_empty(),
                "{}",
                rule.technique.2
            );
        }
    }

    #[test]
    fn each_technique_is_listed_once() {
        let g = for_novelty(&[
            fact(NoveltyKind::NewChildProgram, "/bin/sh"),
            fact(NoveltyKind::NewParentChild, "/usr/sbin/nginx -> /bin/sh"),
        ]);
        assert_eq!(g.techniques.len(), 1);
    }
}
