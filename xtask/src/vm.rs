//! `cargo xtask test --kernel VERSION|all`: the real-kernel checks, inside
//! Debian's own kernels booted in QEMU.
//!
//! Each kernel boots from its Debian package (downloaded once into
//! `~/.cache/monitor/kernels` through a private apt configuration that
//! leaves the system's untouched) with an initramfs holding busybox, the
//! agent and [`GUEST_SCRIPT`]. Under software emulation (TCG; see
//! `../shared/DESIGN.md`, "Kernel matrix", for why not KVM) the full suite
//! would take hours, so the guest runs a subset that covers what differs
//! between kernels:
//! - `monitor verifier`: every program in every setting, within budget;
//! - `monitor record`: an exec (path, argv, parent), a connect and a
//!   sensitive open, each captured;
//! - `monitor run`: learning, then one finding for a sensitive read;
//! - the attacks of issue 20 whose capture depends on the kernel, played by
//!   the tests' `actor` while `monitor record` watches: a file flood by
//!   nobody with an exec in the middle of it (the lifecycle lane), a file
//!   written and mapped as code by nobody, opens through io_uring by nobody,
//!   a relative `#!` script, and a write into the agent's own map by id.
//!   (The other attacks, on the API, the findings and the state, do not
//!   depend on the kernel and run in the host suite only.)
//!
//! A kernel too old for the agent (5.10) must instead be refused by
//! `monitor run` with one line that names the missing features.
//!
//! The guest writes marker lines (`MX ...`) to the serial console; the host
//! parses them out of the console log, which firmware noise also reaches.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::prepare::{self, run_cmd, step};

/// What a kernel of the matrix must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every check passes.
    Works,
    /// `monitor run` refuses to start, in one line naming what is missing.
    Refused,
}

/// One kernel of the matrix: a Debian package, pinned.
#[derive(Debug, Clone, Copy)]
struct Kernel {
    /// What `--kernel` takes.
    id: &'static str,
    /// Who runs it.
    distro: &'static str,
    /// The package holding `vmlinuz`.
    package: &'static str,
    expect: Expect,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        id: "5.10",
        distro: "Debian 11 (bullseye-security)",
        package: "linux-image-5.10.0-46-cloud-amd64",
        expect: Expect::Refused,
    },
    Kernel {
        id: "6.1",
        distro: "Debian 12 (bookworm-security)",
        package: "linux-image-6.1.0-57-cloud-amd64",
        expect: Expect::Works,
    },
    Kernel {
        id: "6.12",
        distro: "Debian 12 (bookworm-security)",
        package: "linux-image-6.12.118+deb12-cloud-amd64",
        expect: Expect::Works,
    },
    Kernel {
        id: "6.12-deb13",
        distro: "Debian 13 (trixie)",
        package: "linux-image-6.12.117+deb13-cloud-amd64",
        expect: Expect::Works,
    },
    Kernel {
        id: "6.18",
        distro: "Debian 13 (trixie-backports)",
        package: "linux-image-6.18.15+deb13-cloud-amd64",
        expect: Expect::Works,
    },
    Kernel {
        id: "7.3",
        distro: "Debian 13 (trixie-backports), newest",
        package: "linux-binary-7.3.4+deb13-cloud-amd64",
        expect: Expect::Works,
    },
];

/// Apt sources of every suite the matrix draws on.
const SOURCES: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian-security bullseye-security main
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian trixie-backports main
";

/// Hard limit on one boot, test and power-off.
const VM_TIMEOUT: Duration = Duration::from_secs(420);

/// The kernels `--kernel` names: one id, a comma-separated list, or `all`.
fn select(which: &str) -> anyhow::Result<Vec<Kernel>> {
    if which == "all" {
        return Ok(KERNELS.to_vec());
    }
    which
        .split(',')
        .map(|id| {
            KERNELS.iter().find(|k| k.id == id).copied().ok_or_else(|| {
                let ids: Vec<&str> = KERNELS.iter().map(|k| k.id).collect();
                anyhow::anyhow!("no kernel `{id}` in the matrix; pick one of {ids:?} or `all`")
            })
        })
        .collect()
}

/// Runs the guest checks on each selected kernel, prints the results and the
/// verifier budget table, and fails if any kernel did not do what it must.
pub fn matrix(which: &str, agent: &Path) -> anyhow::Result<()> {
    let kernels = select(which)?;
    prepare::apt_packages(&[
        ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
        ("busybox-static", "/bin/busybox"),
        ("cpio", "/usr/bin/cpio"),
    ])?;
    let cache = cache_dir();
    let work = prepare::root().join("target/vm");
    std::fs::create_dir_all(&work)?;
    let actor = build_actor()?;
    let initrd =
        build_initramfs(agent, &actor, &work).context("cannot build the guest initramfs")?;
    let accel = accelerator();
    step("ok", "vm accelerator", &accel);
    let mut results = Vec::new();
    for kernel in &kernels {
        let started = Instant::now();
        let log = work.join(format!("console-{}.log", kernel.id));
        let booted = fetch_kernel(&cache, kernel)
            .with_context(|| format!("cannot get kernel {} ({})", kernel.id, kernel.package))
            .and_then(|vmlinuz| {
                step(
                    "..",
                    &format!("kernel {}", kernel.id),
                    &format!("booting {} under {accel}", kernel.package),
                );
                boot(&vmlinuz, &initrd, &log, kernel.expect, &accel)?;
                if let Some(crash) = guest_kernel_crash(&log) {
                    // Seen twice in about 40 boots under TCG with two vCPUs,
                    // both times inside the guest kernel's own code: a timer
                    // list 1.3 s into boot (6.12), and an int3 left by live
                    // code patching in `trace_syscall_exit` while tracepoints
                    // were enabled (7.3). An eBPF program cannot do either;
                    // boot once more, loudly, and keep the first console log.
                    let first = log.with_extension("first-boot.log");
                    step(
                        "..",
                        &format!("kernel {}", kernel.id),
                        &format!(
                            "the guest kernel crashed ({crash}; console: {}); booting once more",
                            first.display()
                        ),
                    );
                    std::fs::rename(&log, &first)?;
                    boot(&vmlinuz, &initrd, &log, kernel.expect, &accel)?;
                }
                Ok(())
            });
        let took = started.elapsed();
        let outcome = booted.and_then(|()| check(kernel, &log));
        match &outcome {
            Ok(report) => step(
                "done",
                &format!("kernel {}", kernel.id),
                &format!(
                    "{} in {:.0} s: {}",
                    report.release,
                    took.as_secs_f64(),
                    report.summary
                ),
            ),
            Err(err) => step(
                "FAIL",
                &format!("kernel {}", kernel.id),
                &format!("{err:#} (console log: {})", log.display()),
            ),
        }
        results.push((kernel, took, outcome));
    }
    print_matrix(&results);
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, _, r)| r.is_err())
        .map(|(k, _, _)| k.id)
        .collect();
    if !failed.is_empty() {
        bail!("kernel matrix: failed on {}", failed.join(", "));
    }
    step(
        "done",
        "kernel matrix",
        &format!("{} kernels passed", results.len()),
    );
    Ok(())
}

fn cache_dir() -> PathBuf {
    // Outside any clone, so every checkout shares the downloads.
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
        .join(".cache/monitor/kernels")
}

/// TCG unless the CPU really has hardware virtualisation: this machine's
/// `/dev/kvm` is a software nested module under which stock kernels die
/// (and QEMU pauses instead of exiting). `MONITOR_VM_ACCEL` overrides.
fn accelerator() -> String {
    if let Ok(accel) = std::env::var("MONITOR_VM_ACCEL") {
        return accel;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hardware && Path::new("/dev/kvm").exists() {
        "kvm".into()
    } else {
        "tcg".into()
    }
}

/// A private apt configuration: its own sources, lists and cache.
fn apt(cache: &Path, command: &str) -> Command {
    let apt = cache.join("apt");
    let mut cmd = Command::new(command);
    for (key, value) in [
        ("Dir::Etc::SourceList", apt.join("sources.list")),
        ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
        ("Dir::State::Lists", apt.join("lists")),
        ("Dir::Cache", apt.join("cache")),
        ("Debug::NoLocking", PathBuf::from("1")),
        // Root-owned cache directories: no privilege drop to `_apt`.
        ("APT::Sandbox::User", PathBuf::from("root")),
    ] {
        cmd.arg("-o").arg(format!("{key}={}", value.display()));
    }
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// The kernel image of `kernel`, downloaded and extracted once.
fn fetch_kernel(cache: &Path, kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let dir = cache.join(kernel.package);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() {
        step(
            "ok",
            &format!("kernel {}", kernel.id),
            &format!("{} cached", kernel.package),
        );
        return Ok(vmlinuz);
    }
    let apt_dir = cache.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt_dir.join(sub))?;
    }
    std::fs::write(apt_dir.join("sources.list"), SOURCES)?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{}_", kernel.package)))
            })
    };
    if find_deb().is_none() {
        step(
            "..",
            &format!("kernel {}", kernel.id),
            &format!("downloading {} ({})", kernel.package, kernel.distro),
        );
        let mut download = apt(cache, "apt-get");
        download
            .args(["download", kernel.package])
            .current_dir(&debs);
        if run_cmd(&mut download).is_err() {
            // The lists are missing or stale: refresh them once and retry.
            run_cmd(apt(cache, "apt-get").args(["update", "-qq"]))
                .context("apt-get update (kernel matrix sources)")?;
            run_cmd(&mut download)?;
        }
    }
    let deb = find_deb().context("the package was not downloaded")?;
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    // `boot/vmlinuz-*` up to 6.16; `usr/lib/modules/*/vmlinuz` after.
    let found = find_file(&tree, &|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name == "vmlinuz" || name.starts_with("vmlinuz-")
    })
    .context("no vmlinuz in the package")?;
    std::fs::rename(&found, &vmlinuz)?;
    let _ = std::fs::remove_dir_all(&tree);
    Ok(vmlinuz)
}

fn find_file(dir: &Path, want: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let ty = entry.file_type().ok()?;
        if ty.is_dir() {
            if let Some(found) = find_file(&path, want) {
                return Some(found);
            }
        } else if ty.is_file() && want(&path) {
            return Some(path);
        }
    }
    None
}

/// An initramfs with busybox, the agent (and the libraries it links) and
/// the guest script as `/init`.
/// The tests' `actor` (it plays the attacks in the guest).
fn build_actor() -> anyhow::Result<PathBuf> {
    run_cmd(
        prepare::cargo()
            .args([
                "build",
                "--release",
                "--package",
                "monitor-tests",
                "--bin",
                "actor",
            ])
            .current_dir(prepare::root())
            .env("PATH", prepare::path_with_cargo_bin()),
    )?;
    Ok(prepare::root().join("target/release/actor"))
}

fn build_initramfs(agent: &Path, actor: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/local/bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var/lib",
        "root",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let copy = |from: &Path, to: &str| -> anyhow::Result<()> {
        let dest = root.join(to.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &dest)
            .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
        Ok(())
    };
    copy(Path::new("/bin/busybox"), "/bin/busybox")?;
    // A binary of its own for the exec check (a busybox applet may run
    // inside the shell without an exec).
    copy(Path::new("/bin/busybox"), "/usr/bin/mx-probe")?;
    copy(agent, "/usr/local/bin/monitor")?;
    copy(actor, "/usr/local/bin/actor")?;
    for lib in shared_libraries(agent)?
        .into_iter()
        .chain(shared_libraries(actor)?)
    {
        copy(&lib, lib.to_str().context("library path")?)?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n")?;
    std::fs::write(root.join("etc/hostname"), "matrix\n")?;
    let init = root.join("init");
    std::fs::write(&init, GUEST_SCRIPT)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        root.join("etc/shadow"),
        std::fs::Permissions::from_mode(0o600),
    )?;

    let initrd = work.join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&initrd)
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cpio | gzip failed ({status})");
    }
    step(
        "done",
        "vm initramfs",
        &format!(
            "{} ({:.1} MiB)",
            initrd.display(),
            std::fs::metadata(&initrd)?.len() as f64 / 1048576.0
        ),
    );
    Ok(initrd)
}

/// The shared libraries `ldd` lists for `binary`.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// Boots `vmlinuz` and waits for it to power off, or kills it at
/// [`VM_TIMEOUT`]. The console goes to `log`.
fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    expect: Expect,
    accel: &str,
) -> anyhow::Result<()> {
    let mode = match expect {
        Expect::Works => "full",
        Expect::Refused => "refuse",
    };
    let _ = std::fs::remove_file(log);
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", &VM_TIMEOUT.as_secs().to_string()])
        .arg("qemu-system-x86_64")
        // One vCPU: under TCG with two, the guest kernel's live code patching
        // (int3 breakpoints while tracepoints are enabled or disabled) oopsed
        // in 3 of about 15 boots.
        .args(["-accel", accel, "-m", "2048", "-smp", "1", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-nodefaults"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic quiet loglevel=3 mx.mode={mode}"
        ));
    if accel == "tcg" {
        cmd.args(["-cpu", "max"]);
    } else {
        cmd.args(["-cpu", "host"]);
    }
    let status = cmd
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot start qemu-system-x86_64")?;
    match status.code() {
        Some(0) => Ok(()),
        Some(124) | Some(137) => {
            bail!("the VM did not power off within {} s", VM_TIMEOUT.as_secs())
        }
        _ => bail!("qemu exited with {status}"),
    }
}

/// The guest kernel's first crash line (`Oops`, `BUG`, `Kernel panic`), if
/// its console has one.
fn guest_kernel_crash(log: &Path) -> Option<String> {
    let text = String::from_utf8_lossy(&std::fs::read(log).ok()?).into_owned();
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.contains("Oops:") || l.contains("BUG:") || l.contains("Kernel panic"))
        .map(|l| l.trim().to_owned())
}

/// What a kernel's console said, checked.
#[derive(Debug)]
struct Report {
    release: String,
    summary: String,
    /// Verifier costs, as `monitor verifier --json` printed them.
    costs: Vec<serde_json::Value>,
}

/// Reads the marker lines of a console log and checks them against what the
/// kernel must do.
fn check(kernel: &Kernel, log: &Path) -> anyhow::Result<Report> {
    let raw = std::fs::read(log).with_context(|| format!("cannot read {}", log.display()))?;
    let text = String::from_utf8_lossy(&raw);
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut lines: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some(at) = line.find("MX") else { continue };
        let line = &line[at..];
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "MX" => {
                if let Some((key, value)) = rest.split_once('=') {
                    values.insert(key.to_owned(), value.to_owned());
                }
            }
            "MXV" | "MXR" | "MXF" | "MXE" | "MXA" => {
                lines.entry(tag).or_default().push(rest.to_owned())
            }
            _ => {}
        }
    }
    let value = |key: &str| values.get(key).cloned();
    let release = value("kernel").context("the guest script never ran (no `MX kernel=` line)")?;
    if value("done").is_none() {
        bail!("the guest script did not finish (no `MX done=` line)");
    }
    let errors = lines.get("MXE").cloned().unwrap_or_default();
    match kernel.expect {
        Expect::Refused => {
            let rc = value("refuse_rc").unwrap_or_default();
            if rc != "2" {
                bail!("`monitor run` exited {rc:?}, not 2: {errors:?}");
            }
            let refusal: Vec<&String> = errors
                .iter()
                .filter(|l| l.starts_with("monitor: error:"))
                .collect();
            let [line] = refusal.as_slice() else {
                bail!("expected one `monitor: error:` line, got: {errors:?}");
            };
            for needle in [release.as_str(), "bpf_loop", "Linux 5.17 or newer"] {
                if !line.contains(needle) {
                    bail!("the refusal does not name {needle:?}: {line}");
                }
            }
            if errors
                .iter()
                .any(|l| l.contains("func_info") || l.contains("processed "))
            {
                bail!("a verifier dump reached the operator: {errors:?}");
            }
            Ok(Report {
                release,
                summary: format!("refused as it must be: {line}"),
                costs: Vec::new(),
            })
        }
        Expect::Works => {
            let costs = json_lines(&lines, "MXV");
            if value("verifier_rc").as_deref() != Some("0") || costs.is_empty() {
                bail!(
                    "`monitor verifier` failed (rc {:?}): {errors:?}",
                    value("verifier_rc")
                );
            }
            let most = costs
                .iter()
                .filter_map(|c| c["processed_insns"].as_u64())
                .max()
                .unwrap_or(0);
            // The agent judges the budget (`within_budget`); a line without
            // the field fails too.
            if let Some(over) = costs.iter().find(|c| c["within_budget"] != true) {
                bail!("over budget or refused: {over}");
            }
            let records = json_lines(&lines, "MXR");
            let shell_pid: u64 = value("shell_pid").and_then(|p| p.parse().ok()).unwrap_or(0);
            let exec = records.iter().find(|r| {
                r["kind"] == "exec"
                    && r["path"] == "/usr/bin/mx-probe"
                    && r["args"][1] == "mx-argv-token"
            });
            let Some(exec) = exec else {
                bail!(
                    "no exec of /usr/bin/mx-probe with its argv captured: {records:?} {errors:?}"
                );
            };
            if exec["parent"]["pid"].as_u64() != Some(shell_pid) {
                bail!("the exec's parent is not the shell ({shell_pid}): {exec}");
            }
            if !records
                .iter()
                .any(|r| r["kind"] == "connect" && r["port"] == 7777 && r["address"] == "127.0.0.1")
            {
                bail!("no connect to 127.0.0.1:7777 captured: {records:?}");
            }
            if !records.iter().any(|r| {
                r["kind"] == "file_open" && r["path"] == "/etc/shadow" && r["sensitive"] == true
            }) {
                bail!("no sensitive open of /etc/shadow captured: {records:?}");
            }
            let attacks = check_attacks(&json_lines(&lines, "MXA"), &value, &errors)?;
            let findings = json_lines(&lines, "MXF");
            let finding = findings.iter().find(|f| {
                f["class_uid"] == 2004
                    && f["unmapped"]["monitor"]["novelty"]
                        .to_string()
                        .contains("/etc/shadow")
            });
            if finding.is_none() {
                bail!(
                    "`monitor run` raised no finding for the shadow read (learning ended: {:?}; {} finding lines): {errors:?}",
                    value("detecting_after_s"),
                    findings.len()
                );
            }
            Ok(Report {
                release,
                summary: format!(
                    "{} loads within budget (most {most} insns), exec/connect/open captured, first exec {} s after start, finding raised {} s after learning; attacks: {attacks}",
                    costs.len(),
                    value("record_ready_s").unwrap_or_default(),
                    value("finding_after_s").unwrap_or_default(),
                ),
                costs,
            })
        }
    }
}

/// The attack phase's events (`MXA`): each attack must have been captured,
/// or, for io_uring, the kernel must lack the tracepoint. Returns a summary.
fn check_attacks(
    events: &[serde_json::Value],
    value: &dyn Fn(&str) -> Option<String>,
    errors: &[String],
) -> anyhow::Result<String> {
    if value("attacks_rc").as_deref() != Some("0") {
        bail!(
            "`monitor record` of the attacks exited {:?}: {errors:?}",
            value("attacks_rc")
        );
    }
    let exec_during_flood = events.iter().any(|r| {
        r["kind"] == "exec" && r["path"] == "/usr/bin/mx-probe" && r["args"][1] == "mx-flood-token"
    });
    if !exec_during_flood {
        bail!("the exec during nobody's file flood was not captured: {events:?} {errors:?}");
    }
    let mapped = events.iter().find(|r| {
        r["kind"] == "mem_exec"
            && r["file"]["path"] == "/tmp/drop/dropped.so"
            && r["file"]["written_by_uid"] == 65534
    });
    if mapped.is_none() {
        bail!("nobody's freshly written file mapped as code was not reported: {events:?}");
    }
    let script = events.iter().any(|r| {
        r["kind"] == "exec" && r["script"] == true && r["script_path"] == "/tmp/jobs/job.sh"
    });
    if !script {
        bail!("the relative script ./job.sh was not named /tmp/jobs/job.sh: {events:?}");
    }
    let written = value("agent_maps_written").unwrap_or_default();
    let reached = events.iter().any(|r| {
        r["kind"] == "bpf_load"
            && r["command"] == "map_update_elem"
            && r["agent_object"]
                .as_str()
                .is_some_and(|o| o.starts_with("map "))
    });
    if written == "0" || !reached {
        bail!(
            "a write into the agent's AGENT_OBJECTS map (written into {written:?} maps) was not reported: {events:?}"
        );
    }
    let uring = if value("io_uring_tracepoint").as_deref() == Some("1") {
        let reported = events
            .iter()
            .any(|r| r["syscall"] == "io_uring_openat" && r["process"]["uid"] == 65534);
        if !reported {
            bail!(
                "nobody's opens through io_uring were not reported (actor said {:?}): {events:?}",
                value("io_uring_actor")
            );
        }
        "io_uring opens reported"
    } else {
        "io_uring skipped (no io_uring submit tracepoint)"
    };
    let limited = events.iter().any(|r| r["kind"] == "loss");
    Ok(format!(
        "exec during a file flood captured{}, fresh code mapped, script named, agent map write reported, {uring}",
        if limited { " (flood rate-limited)" } else { "" }
    ))
}

/// The lines of one tag that parse as JSON (a line the console garbled is
/// left out, and then a check that needs it fails and says so).
fn json_lines(lines: &BTreeMap<&str, Vec<String>>, tag: &str) -> Vec<serde_json::Value> {
    lines
        .get(tag)
        .into_iter()
        .flatten()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn print_matrix(results: &[(&Kernel, Duration, anyhow::Result<Report>)]) {
    println!();
    println!("kernel matrix:");
    println!(
        "{:<12} {:<38} {:<28} {:>6}  result",
        "id", "distribution", "release", "secs"
    );
    for (kernel, took, outcome) in results {
        let (release, verdict) = match outcome {
            Ok(r) => (r.release.clone(), "pass".to_owned()),
            Err(e) => ("?".into(), format!("FAIL: {e:#}")),
        };
        println!(
            "{:<12} {:<38} {:<28} {:>6.0}  {verdict}",
            kernel.id,
            kernel.distro,
            release,
            took.as_secs_f64()
        );
    }
    println!();
    println!(
        "verifier budget (processed instructions and load time; the agent's budget is 100000):"
    );
    println!(
        "{:<28} {:<19} {:>17} {:>17} {:>17} {:>17}",
        "kernel", "program", "counts+security", "counts", "security", "none"
    );
    for (_, _, outcome) in results {
        let Ok(report) = outcome else { continue };
        let mut by_program: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for c in &report.costs {
            let program = c["program"].as_str().unwrap_or("?").to_owned();
            let label = c["settings"].as_str().unwrap_or("?");
            let cell = format!(
                "{} ({:.0}ms)",
                c["processed_insns"]
                    .as_u64()
                    .map_or("?".into(), |n| n.to_string()),
                c["load_ms"].as_f64().unwrap_or(0.0)
            );
            by_program
                .entry(program)
                .or_default()
                .insert(label.into(), cell);
        }
        for (program, cells) in by_program {
            let cell = |k: &str| cells.get(k).cloned().unwrap_or_default();
            println!(
                "{:<28} {:<19} {:>17} {:>17} {:>17} {:>17}",
                report.release,
                program,
                cell("counts+security"),
                cell("counts"),
                cell("security"),
                cell("none")
            );
        }
    }
}

/// The guest's `/init`. It prints `MX key=value` facts and prefixed lines
/// (`MXV` verifier costs, `MXR` captured events, `MXF` findings, `MXE`
/// errors) and powers off.
const GUEST_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/local/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
hostname matrix
ip link set lo up
echo "MX kernel=$(uname -r)"
echo "MX shell_pid=$$"
mode=full
case "$(cat /proc/cmdline)" in *mx.mode=refuse*) mode=refuse ;; esac
now() { cut -d' ' -f1 /proc/uptime; }
# wait_for FILE PATTERN SECONDS: waits for FILE to contain PATTERN.
wait_for() {
    i=0
    limit=$(($3 * 5))
    while ! grep -q "$2" "$1" 2>/dev/null; do
        sleep 0.2; i=$((i + 1))
        [ "$i" -gt "$limit" ] && return 1
    done
    return 0
}

if [ "$mode" = refuse ]; then
    monitor run --state-dir /var/lib/monitor --api-listen '' >/tmp/run.jsonl 2>/tmp/run.err
    echo "MX refuse_rc=$?"
    sed 's/^/MXE /' /tmp/run.err
else
    monitor verifier --json >/tmp/verifier.jsonl 2>/tmp/verifier.err
    echo "MX verifier_rc=$?"
    sed 's/^/MXV /' /tmp/verifier.jsonl
    tail -n 5 /tmp/verifier.err | sed 's/^/MXE verifier: /'

    t0=$(now)
    monitor record --duration 10 >/tmp/rec.jsonl 2>/tmp/rec.err &
    rec=$!
    wait_for /tmp/rec.err "monitor: ready" 120 || echo "MXE record never ready"
    echo "MX record_ready_s=$(echo "$(now) $t0" | awk '{print $1 - $2}')"
    /usr/bin/mx-probe mx-argv-token >/dev/null 2>&1
    nc 127.0.0.1 7777 </dev/null >/dev/null 2>&1
    cat /etc/shadow >/dev/null
    wait $rec
    echo "MX record_rc=$?"
    grep '"kind":"exec"' /tmp/rec.jsonl | grep mx-argv-token | head -n 2 | sed 's/^/MXR /'
    grep '"kind":"connect"' /tmp/rec.jsonl | grep '"port":7777' | head -n 2 | sed 's/^/MXR /'
    grep '"kind":"file_open"' /tmp/rec.jsonl | grep /etc/shadow | head -n 2 | sed 's/^/MXR /'
    tail -n 5 /tmp/rec.err | sed 's/^/MXE record: /'

    # The attacks whose capture depends on the kernel (issue 20), while
    # `monitor record` watches. nobody is uid 65534.
    [ -d /sys/kernel/tracing/events/io_uring/io_uring_submit_req ] || \
        [ -d /sys/kernel/tracing/events/io_uring/io_uring_submit_sqe ]
    echo "MX io_uring_tracepoint=$((1 - $?))"
    mkdir -p /tmp/flood /tmp/drop /tmp/jobs
    chmod 777 /tmp/flood /tmp/drop
    printf '#!/bin/sh\nexit 0\n' >/tmp/jobs/job.sh
    chmod 755 /tmp/jobs/job.sh
    monitor record --duration 20 >/tmp/att.jsonl 2>/tmp/att.err &
    rec=$!
    wait_for /tmp/att.err "monitor: ready" 120 || echo "MXE attacks: record never ready"
    actor as 65534 open-flood /tmp/flood 4 >/dev/null &
    f1=$!
    actor as 65534 open-flood /tmp/flood 4 >/dev/null &
    f2=$!
    sleep 1
    /usr/bin/mx-probe mx-flood-token >/dev/null 2>&1
    wait $f1 $f2
    actor as 65534 drop-and-map /tmp/drop/dropped.so >/dev/null
    actor as 65534 io-uring-openat /etc/hostname 20 >/tmp/uring.out 2>&1
    echo "MX io_uring_actor=$(head -c 200 /tmp/uring.out | tr '\n' ' ')"
    ( cd /tmp/jobs && ./job.sh )
    echo "MX agent_maps_written=$(actor bpf-map-update-by-name AGENT_OBJECTS | wc -l)"
    wait $rec
    echo "MX attacks_rc=$?"
    grep '"kind":"exec"' /tmp/att.jsonl | grep -e mx-flood-token -e /tmp/jobs/job.sh | head -n 4 | sed 's/^/MXA /'
    grep '"kind":"mem_exec"' /tmp/att.jsonl | grep /tmp/drop/dropped.so | head -n 2 | sed 's/^/MXA /'
    grep '"io_uring_openat"' /tmp/att.jsonl | head -n 2 | sed 's/^/MXA /'
    grep '"agent_object"' /tmp/att.jsonl | grep '"command":"map_update_elem"' | head -n 2 | sed 's/^/MXA /'
    grep '"kind":"loss"' /tmp/att.jsonl | grep rate_limited | head -n 1 | sed 's/^/MXA /'
    tail -n 5 /tmp/att.err | sed 's/^/MXE attacks: /'

    # A steady workload to learn from while the agent learns.
    ( while :; do ls / >/dev/null; cat /proc/uptime >/dev/null; sleep 0.3; done ) &
    work=$!
    t0=$(now)
    monitor run --learn-for 20s --min-windows 30 --drain-interval 1s --raw-events \
        --state-dir /var/lib/monitor --api-listen '' >/tmp/run.jsonl 2>/tmp/run.err &
    agent=$!
    if wait_for /tmp/run.err detecting 240; then
        echo "MX detecting_after_s=$(echo "$(now) $t0" | awk '{print $1 - $2}')"
        t1=$(now)
        cat /etc/shadow >/dev/null
        wait_for /tmp/run.jsonl '"class_uid":2004' 60 && \
            echo "MX finding_after_s=$(echo "$(now) $t1" | awk '{print $1 - $2}')"
    else
        echo "MXE learning did not end"
    fi
    kill $agent; wait $agent
    echo "MX run_rc=$?"
    kill $work
    grep '"class_uid":2004' /tmp/run.jsonl | sed 's/^/MXF /'
    grep -v '^monitor: learning' /tmp/run.err | tail -n 8 | sed 's/^/MXE run: /'
fi
echo "MX done=1"
sync
poweroff -f
"#;
