//! Preparing a machine: toolchain pieces, bpf-linker, mounts, packages.
//!
//! Every step checks first and prints one line: `[ok]` when it was already
//! done, `[done]` when it just did it, or an error naming what is missing and
//! how to fix it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// bpf-linker version used; moves together with the nightly toolchain.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Prints a step line.
pub fn step(status: &str, what: &str, detail: &str) {
    println!("xtask: [{status}] {what}: {detail}");
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// A `cargo` command without the variables `cargo run` set for xtask
/// itself: build scripts (ring's) watch `CARGO_MANIFEST_DIR`, so leaking
/// xtask's would make every build after a plain `cargo build` start over.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_CRATE_")
            || key.starts_with("CARGO_BIN_")
            || key == "CARGO_PRIMARY_PACKAGE"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Runs a command, failing with its name if it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Output of a command, if it ran and succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly Rust toolchain is missing; install it with \
             `rustup toolchain install nightly --component rust-src`",
    )?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// Nightly toolchain and its rust-src component.
pub fn nightly_rust_src() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let version = output(Command::new("rustc").args(["+nightly", "--version"])).unwrap_or_default();
    step("ok", "nightly toolchain", version.trim());
    let src = sysroot.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        step("ok", "rust-src for nightly", "installed");
        return Ok(());
    }
    step("..", "rust-src for nightly", "installing");
    run_cmd(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("cannot install rust-src; run `rustup component add rust-src --toolchain nightly`")?;
    step("done", "rust-src for nightly", "installed");
    Ok(())
}

/// Where cargo installs binaries.
fn cargo_bin_dir() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home).join("bin"),
        None => home_dir().join(".cargo/bin"),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// bpf-linker, built against the nightly toolchain's own libLLVM.
///
/// No LLVM package of the right major version exists on Debian 12, but
/// rustup ships libLLVM inside the nightly sysroot; bpf-linker links against
/// it through a prefix of symlinks outside any clone (the binary keeps an
/// rpath to it). A stamp records which libLLVM it was built for, so a nightly
/// upgrade triggers a rebuild and an unchanged one does not.
pub fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let lib_dir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: this nightly does not ship LLVM as a shared library",
                lib_dir.display()
            )
        })?;
    let major: String = libllvm
        .trim_start_matches("libLLVM.so.")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let prefix = home_dir().join(format!(".cache/monitor/llvm-{major}"));
    let stamp = prefix.join("bpf-linker.stamp");
    let wanted = format!("{libllvm} bpf-linker {BPF_LINKER_VERSION}\n");
    let linker = cargo_bin_dir().join("bpf-linker");
    let works = output(Command::new(&linker).arg("--version")).is_some();
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        step(
            "ok",
            "bpf-linker",
            &format!("{} (LLVM {major}, {libllvm})", linker.display()),
        );
        return Ok(());
    }
    step(
        "..",
        "bpf-linker",
        &format!("building {BPF_LINKER_VERSION} against nightly's {libllvm} (about 80 s)"),
    );
    let started = Instant::now();
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    for name in ["libLLVM.so".to_owned(), libllvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&libllvm), &link)
            .with_context(|| format!("cannot create symlink {}", link.display()))?;
    }
    run_cmd(
        cargo()
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR"),
    )
    .context("cannot build bpf-linker (needs network access to crates.io)")?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    step(
        "done",
        "bpf-linker",
        &format!(
            "{} in {:.0} s",
            linker.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// Toolchain, then `cargo build --release`. Returns the agent's path.
pub fn build() -> anyhow::Result<PathBuf> {
    nightly_rust_src()?;
    bpf_linker()?;
    let started = Instant::now();
    step(
        "..",
        "cargo build --release",
        "building the eBPF programs and the agent",
    );
    run_cmd(
        cargo()
            .args(["build", "--release", "--package", "monitor"])
            .current_dir(root())
            .env("PATH", path_with_cargo_bin()),
    )?;
    let agent = root().join("target/release/monitor");
    step(
        "done",
        "agent",
        &format!(
            "{} ({:.1} s)",
            agent.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(agent)
}

/// PATH with cargo's bin directory first (where bpf-linker was installed).
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).expect("PATH entries have no separator")
}

/// True when running as root.
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}

/// The pseudo-filesystems the agent needs (it also mounts them itself; this
/// makes the step visible and fails early with a clear message).
pub fn mounts() -> anyhow::Result<()> {
    const MOUNTS: &[(&str, &str)] = &[
        ("/sys/kernel/tracing", "tracefs"),
        ("/sys/fs/bpf", "bpf"),
        ("/sys/kernel/security", "securityfs"),
    ];
    let mounted = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for (target, fstype) in MOUNTS {
        let present = mounted.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(target) && f.get(2) == Some(fstype)
        });
        if present {
            step("ok", &format!("{fstype} at {target}"), "mounted");
            continue;
        }
        if !is_root() {
            bail!(
                "{fstype} is not mounted at {target}; run `sudo mount -t {fstype} {fstype} {target}`"
            );
        }
        run_cmd(Command::new("mount").args(["-t", fstype, fstype, target]))
            .with_context(|| format!("cannot mount {fstype} at {target}"))?;
        step("done", &format!("{fstype} at {target}"), "mounted");
    }
    Ok(())
}

/// Debian packages, installed if their command is missing.
pub fn apt_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, cmd)| !command_exists(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    for (pkg, cmd) in packages {
        if command_exists(cmd) {
            step("ok", &format!("package {pkg}"), &format!("{cmd} present"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {missing:?}; run `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    step(
        "..",
        "packages",
        &format!("apt-get install {}", missing.join(" ")),
    );
    run_cmd(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install {missing:?}"))?;
    step("done", "packages", &missing.join(" "));
    Ok(())
}

/// True if `cmd` is an executable path or found on PATH.
pub fn command_exists(cmd: &str) -> bool {
    if cmd.contains('/') {
        return Path::new(cmd).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()))
}

/// OCSF schema validator versions, pinned so a schema release cannot change
/// what the tests accept.
const OCSF_PACKAGES: &[&str] = &["ocsf-json-schema==1.2.0", "jsonschema==4.23.0"];

/// A Python virtualenv holding the official OCSF JSON schemas and a
/// validator (`tests/ocsf/validate.py`). Returns its python.
pub fn ocsf_validator() -> anyhow::Result<PathBuf> {
    let venv = home_dir().join(".cache/monitor/ocsf-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("monitor.stamp");
    let wanted = OCSF_PACKAGES.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && python.exists() {
        step(
            "ok",
            "OCSF schema validator",
            &format!("{} ({wanted})", venv.display()),
        );
        return Ok(python);
    }
    step(
        "..",
        "OCSF schema validator",
        &format!("creating {} with {wanted}", venv.display()),
    );
    let system_python = ["python3", "python"]
        .into_iter()
        .find(|p| command_exists(p))
        .context("python3 is missing; install it (`apt-get install -y python3 python3-venv`)")?;
    run_cmd(
        Command::new(system_python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )
    .context("cannot create a Python venv (on Debian: `apt-get install -y python3-venv`)")?;
    run_cmd(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(OCSF_PACKAGES),
    )
    .context("cannot install the OCSF schema packages from PyPI")?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    step("done", "OCSF schema validator", &venv.display().to_string());
    Ok(python)
}
