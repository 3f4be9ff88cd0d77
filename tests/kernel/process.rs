//! Process lifecycle capture: exec, fork, exit, ancestry, exec storms.

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    process::Command,
    time::Duration,
};

use monitor::{
    capture::CaptureSettings,
    event::{Detail, Event},
};
use monitor_tests::{Recorder, execs_with, kernel_test, test_dir, token};

fn exec_of(events: &[Event], pid: u32) -> Option<&Event> {
    events.iter().find(|e| {
        matches!(e.detail, Detail::Exec(_)) && e.process.as_ref().is_some_and(|p| p.pid == pid)
    })
}

fn exit_of(events: &[Event], pid: u32) -> Option<&Event> {
    events.iter().find(|e| {
        matches!(e.detail, Detail::Exit(_)) && e.process.as_ref().is_some_and(|p| p.pid == pid)
    })
}

#[test]
fn exec_fork_exit_of_a_spawned_process_carry_exact_facts() {
    let Some(_kernel) = kernel_test("exec_fork_exit_of_a_spawned_process_carry_exact_facts") else {
        return;
    };
    let mut rec = Recorder::start();
    let token = token("exec");
    let non_utf8 = OsStr::from_bytes(b"caf\xe9-\xff\xfe-\nline");
    let big = "A".repeat(4096);
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 7", "sh", &token])
        .arg(non_utf8)
        .arg(&big)
        .uid(65534)
        .gid(65534)
        .spawn()
        .expect("spawn /bin/sh");
    let pid = child.id();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(7));

    rec.until(
        Duration::from_secs(10),
        "exec and exit of the child",
        |evs| exec_of(evs, pid).is_some() && exit_of(evs, pid).is_some(),
    );
    let exec = exec_of(&rec.events, pid).unwrap();
    let Detail::Exec(detail) = &exec.detail else {
        unreachable!()
    };
    let real_sh = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(
        detail.path.as_bytes(),
        real_sh.as_os_str().as_bytes(),
        "kernel-resolved path"
    );
    assert_eq!(detail.filename.as_bytes(), b"/bin/sh");
    let args: Vec<&[u8]> = detail.args.iter().map(|a| a.as_bytes()).collect();
    let expected: Vec<&[u8]> = vec![
        b"/bin/sh",
        b"-c",
        b"exit 7",
        b"sh",
        token.as_bytes(),
        non_utf8.as_bytes(),
        big.as_bytes(),
    ];
    assert_eq!(
        args, expected,
        "argv, byte for byte, including the 4 KiB argument"
    );
    assert!(!detail.args_truncated);
    let process = exec.process.as_ref().unwrap();
    assert_eq!(
        process.ppid,
        std::process::id(),
        "parent is this test process"
    );
    assert_eq!(
        (process.uid, process.euid, process.gid),
        (65534, 65534, 65534)
    );
    assert_eq!(
        process.exe.as_ref().unwrap().as_bytes(),
        real_sh.as_os_str().as_bytes()
    );
    assert_eq!(exec.parent.as_ref().unwrap().pid, std::process::id());

    // The event survives JSON (lossless for the non-UTF-8 argument).
    let json = serde_json::to_string(exec).unwrap();
    let back: Event = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, exec);

    // Ancestry: this test process (seeded from /proc) and up to pid 1.
    assert_eq!(
        exec.ancestry.first().map(|a| a.pid),
        Some(std::process::id())
    );
    assert_eq!(
        exec.ancestry.last().map(|a| a.pid),
        Some(1),
        "{:?}",
        exec.ancestry
    );

    let exit = exit_of(&rec.events, pid).unwrap();
    let Detail::Exit(exit_detail) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit_detail.exit_code, Some(7));
    assert_eq!(exit_detail.signal, None);

    let fork = rec.events.iter().find(|e| {
        matches!(e.detail, Detail::Fork(_)) && e.process.as_ref().is_some_and(|p| p.pid == pid)
    });
    let fork = fork.expect("fork event of the child");
    assert_eq!(fork.parent.as_ref().unwrap().pid, std::process::id());
}

/// Issue 20, item 3: a `#!` script is named with its interpreter both, its
/// relative name made absolute, so each script is a program of its own.
#[test]
fn a_script_is_named_with_its_interpreter_both() {
    let Some(_kernel) = kernel_test("a_script_is_named_with_its_interpreter_both") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt as _;
    let dir = monitor_tests::test_dir("script-name");
    let script = dir.join("job.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut rec = Recorder::start();
    // Run as `./job.sh` from its directory: the kernel sees a relative name.
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exec ./job.sh"])
        .current_dir(&dir)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(3));
    let is_script = |e: &&Event| matches!(&e.detail, Detail::Exec(x) if x.script);
    rec.until(
        Duration::from_secs(10),
        "the script's exec and exit",
        |evs| {
            evs.iter()
                .filter(|e| e.process.as_ref().is_some_and(|p| p.pid == pid))
                .any(|e| is_script(&e))
                && exit_of(evs, pid).is_some()
        },
    );
    let exec = rec
        .events
        .iter()
        .filter(|e| e.process.as_ref().is_some_and(|p| p.pid == pid))
        .find(is_script)
        .unwrap();
    let Detail::Exec(x) = &exec.detail else {
        unreachable!()
    };
    let absolute = script.as_os_str().as_bytes();
    assert_eq!(x.filename.as_bytes(), b"./job.sh");
    assert_eq!(x.script_path.as_ref().map(|p| p.as_bytes()), Some(absolute));
    let interpreter = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(x.path.as_bytes(), interpreter.as_os_str().as_bytes());
    // Later events of the process carry the script too, and so its program.
    let exit = exit_of(&rec.events, pid).unwrap();
    let p = exit.process.as_ref().unwrap();
    assert_eq!(p.script.as_ref().map(|s| s.as_bytes()), Some(absolute));
    let program = monitor::event::program_name(p.exe.as_ref().unwrap(), p.script.as_ref());
    eprintln!("the script's program: {program}");
    assert_eq!(
        program,
        format!("{} {}", interpreter.display(), script.display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_process_reports_its_signal() {
    let Some(_kernel) = kernel_test("a_killed_process_reports_its_signal") else {
        return;
    };
    let mut rec = Recorder::start();
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    rec.until(Duration::from_secs(10), "exit of the killed child", |evs| {
        exit_of(evs, pid).is_some()
    });
    let Detail::Exit(exit) = &exit_of(&rec.events, pid).unwrap().detail else {
        unreachable!()
    };
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGKILL)));
}

/// Spawns `n` short processes directly from this process (no shell between
/// them and the test), each with `token` as its argument.
fn storm(n: usize, token: &str) {
    for _ in 0..n {
        let status = Command::new("/bin/true")
            .arg(token)
            .status()
            .expect("spawn /bin/true");
        assert!(status.success());
    }
}

fn count_storm(rec: &Recorder, token: &str) -> (u64, u64) {
    let captured = execs_with(&rec.events, token).count() as u64;
    let dropped = rec
        .capture()
        .loss_totals()
        .get("ringbuf_full.exec")
        .copied()
        .unwrap_or(0);
    (captured, dropped)
}

#[test]
fn exec_storm_is_captured_or_its_shortfall_is_the_drop_count() {
    let Some(_kernel) = kernel_test("exec_storm_is_captured_or_its_shortfall_is_the_drop_count")
    else {
        return;
    };
    const N: u64 = 2000;
    let mut rec = Recorder::start();
    let token = token("storm");
    let spawner = {
        let token = token.clone();
        std::thread::spawn(move || storm(N as usize, &token))
    };
    rec.collect_for(Duration::from_millis(200));
    while !spawner.is_finished() {
        rec.collect_for(Duration::from_millis(100));
    }
    spawner.join().unwrap();
    rec.stop();
    let (captured, dropped) = count_storm(&rec, &token);
    eprintln!("exec storm: {N} execs, {captured} captured, {dropped} dropped (counted)");
    assert_eq!(
        captured + dropped,
        N,
        "every exec is either captured or counted as dropped"
    );
}

#[test]
fn exec_storm_through_a_tiny_ring_counts_every_drop() {
    let Some(_kernel) = kernel_test("exec_storm_through_a_tiny_ring_counts_every_drop") else {
        return;
    };
    const N: u64 = 2000;
    // A 64 KiB ring has a 16 KiB lifecycle lane, about 80 exec records and
    // their forks and exits, and a one-slot channel that nobody reads during
    // the storm keeps it full: drops are certain.
    let mut settings = CaptureSettings::default();
    settings.probes.ringbuf_bytes = 64 * 1024;
    settings.channel_capacity = 1;
    // The drop counter is per kind, not per process: other processes' execs
    // during the storm are dropped and counted too. A second capture with
    // the default ring, running around the first, sees every exec on the
    // host, so it bounds how many of the drops can be theirs.
    let mut all = Recorder::start();
    let mut rec = Recorder::with_settings(settings);
    let token = token("tiny");
    let spawner = {
        let token = token.clone();
        std::thread::spawn(move || storm(N as usize, &token))
    };
    while !spawner.is_finished() {
        all.collect_for(Duration::from_millis(100));
    }
    spawner.join().unwrap();
    rec.stop();
    all.collect_for(Duration::from_millis(200));
    all.stop();
    let (seen, missed) = count_storm(&all, &token);
    assert_eq!((seen, missed), (N, 0), "the full-size ring saw the storm");
    let others = all
        .events
        .iter()
        .filter(|e| matches!(e.detail, Detail::Exec(_)))
        .count() as u64
        - N;
    let (captured, dropped) = count_storm(&rec, &token);
    eprintln!(
        "tiny-ring exec storm: {N} execs, {captured} captured, {dropped} dropped (counted); \
         {others} other execs on the host meanwhile"
    );
    assert!(dropped > 0, "the tiny ring must overflow");
    assert!(
        captured + dropped >= N,
        "every exec of the storm is captured or counted as dropped: {captured} + {dropped} < {N}"
    );
    assert!(
        captured + dropped <= N + others,
        "no more drops than execs that happened: {captured} + {dropped} > {N} + {others}"
    );
    // The loss is also in the stream, as an event.
    let reported: u64 = rec
        .events
        .iter()
        .filter_map(|e| match &e.detail {
            Detail::Loss(loss) => loss.counts.get("ringbuf_full.exec").copied(),
            _ => None,
        })
        .sum();
    assert_eq!(reported, dropped, "loss events add up to the counter");
}

/// Records are sized to their contents: a burst of 200 write-opens of short
/// names fits a 64 KiB ring that nobody reads meanwhile (at the fixed 13 KiB
/// a file record took before, three 4,360-byte path areas, four would
/// have), and the same burst with 3 KiB names overflows it, every record
/// lost counted.
#[test]
fn records_are_sized_to_their_contents_so_a_small_ring_holds_a_burst() {
    let Some(_kernel) =
        kernel_test("records_are_sized_to_their_contents_so_a_small_ring_holds_a_burst")
    else {
        return;
    };
    const N: usize = 200;
    let (captured, lost) = burst_through_a_small_ring(N, 0);
    eprintln!(
        "{N} write-opens of short names through a 64 KiB ring: {captured} captured, {lost} lost"
    );
    assert_eq!(captured, N, "every write-open fit the ring ({lost} lost)");

    // Twelve directories of 250-byte names: each path about 3 KiB.
    let (captured, lost) = burst_through_a_small_ring(N, 12);
    eprintln!(
        "{N} write-opens of 3 KiB names through a 64 KiB ring: {captured} captured, {lost} lost"
    );
    assert!(
        captured < N / 4,
        "long names take more of the ring: {captured} fit"
    );
    assert!(
        captured as u64 + lost >= N as u64,
        "every write-open is captured or counted lost: {captured} + {lost} < {N}"
    );
}

/// `n` write-opens by one shell, in a directory `depth` levels of 250-byte
/// names below a fresh one, through a 64 KiB ring that is not read until
/// they are done: how many were captured and how many file records the
/// kernel counted lost.
fn burst_through_a_small_ring(n: usize, depth: usize) -> (usize, u64) {
    let mut dir = test_dir("sized");
    let top = dir.clone();
    for level in 0..depth {
        dir.push(format!("{level:02}{}", "d".repeat(248)));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = CaptureSettings::default();
    settings.probes.ringbuf_bytes = 64 * 1024;
    settings.channel_capacity = 1;
    let mut rec = Recorder::with_settings(settings);
    // One shell writes them (the capture leaves out its own process's).
    let script = format!("i=0; while [ $i -lt {n} ]; do : > f$i; i=$((i+1)); done");
    let status = Command::new("/bin/sh")
        .args(["-c", &script])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    rec.stop();
    let _ = std::fs::remove_dir_all(&top);
    let prefix = dir.as_os_str().as_bytes();
    let captured = rec
        .events
        .iter()
        .filter(|e| match &e.detail {
            Detail::FileOpen(f) => f.write && f.path.as_bytes().starts_with(prefix),
            _ => false,
        })
        .count();
    let lost = rec
        .events
        .iter()
        .filter_map(|e| match &e.detail {
            Detail::Loss(loss) => loss.counts.get("ringbuf_full.file").copied(),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    (captured, lost)
}

/// Runs the actor with `args` under 200 ms counts (so counts must
/// add up across several) and returns its process's `syscall_counts`
/// windows, up to the final one.
fn actor_drain_intervals(args: &[&str]) -> Vec<monitor::event::CountsDetail> {
    let mut settings = CaptureSettings::default();
    settings.counts.drain_every = Duration::from_millis(200);
    let mut rec = Recorder::with_settings(settings);
    let child = Command::new(env!("CARGO_BIN_EXE_actor"))
        .args(args)
        .spawn()
        .unwrap();
    let pid = child.id();
    // Its windows come before its exit event; the last is marked final only
    // if a drain had not already read its last calls.
    rec.until(Duration::from_secs(10), "the process's exit", |evs| {
        exit_of(evs, pid).is_some()
    });
    assert!(child.wait_with_output().unwrap().status.success());
    drain_intervals(&rec.events, pid)
}

/// The `syscall_counts` windows of process `pid` among `events`.
fn drain_intervals(events: &[Event], pid: u32) -> Vec<monitor::event::CountsDetail> {
    events
        .iter()
        .filter(|e| e.process.as_ref().is_some_and(|p| p.pid == pid))
        .filter_map(|e| match &e.detail {
            Detail::SyscallCounts(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// Calls of syscall `name` over all `windows`.
fn counted(windows: &[monitor::event::CountsDetail], name: &str) -> u64 {
    windows
        .iter()
        .map(|p| p.counts.get(name).copied().unwrap_or(0))
        .sum()
}

/// The count of the pair bucket of (`prev`, `next`) over all `windows`.
fn pairs(windows: &[monitor::event::CountsDetail], prev: libc::c_long, next: libc::c_long) -> u64 {
    let bucket = monitor_common::pair_bucket(prev as u32, next as u32) as u16;
    windows
        .iter()
        .map(|p| p.pairs.get(&bucket).copied().unwrap_or(0))
        .sum()
}

#[test]
fn syscall_counts_are_exactly_what_a_process_did() {
    let Some(_kernel) = kernel_test("syscall_counts_are_exactly_what_a_process_did") else {
        return;
    };
    const N: u64 = 3_000_000;
    let windows = actor_drain_intervals(&["getppid", &N.to_string()]);
    assert!(windows.len() > 1, "the count spans several windows");
    let counted = counted(&windows, "getppid");
    eprintln!(
        "getppid: {N} calls, {counted} counted over {} windows",
        windows.len()
    );
    // The helper's runtime makes no getppid calls of its own.
    assert_eq!(counted, N, "every call counted once");
    assert!(windows.iter().all(|w| w.since <= w.until));
    let total: u64 = windows.iter().map(|p| p.total).sum();
    assert!(total >= N);
    // Consecutive pairs: the loop is one run of getppid, which the kernel
    // counts on a per-CPU fast path; every call after the first is a
    // (getppid, getppid) pair. Other pairs may share the bucket, never
    // fewer.
    let repeated = pairs(&windows, libc::SYS_getppid, libc::SYS_getppid);
    assert!(
        (N - 1..=total).contains(&repeated),
        "(getppid, getppid) pairs: {repeated}, calls: {N}, total: {total}"
    );
}

#[test]
fn alternating_syscalls_are_counted_exactly_with_their_pairs() {
    let Some(_kernel) = kernel_test("alternating_syscalls_are_counted_exactly_with_their_pairs")
    else {
        return;
    };
    // Every call starts a new run, so the kernel's per-CPU batches fill up
    // and are added to the counts over and over, under short windows.
    const N: u64 = 1_000_000;
    let windows = actor_drain_intervals(&["alternate", &N.to_string()]);
    let (getppid, getuid) = (counted(&windows, "getppid"), counted(&windows, "getuid"));
    let forth = pairs(&windows, libc::SYS_getppid, libc::SYS_getuid);
    let back = pairs(&windows, libc::SYS_getuid, libc::SYS_getppid);
    eprintln!(
        "{N} x (getppid, getuid): getppid {getppid}, getuid {getuid}, pairs {forth} forth and \
         {back} back, over {} windows",
        windows.len()
    );
    assert_eq!((getppid, getuid), (N, N), "every call counted once");
    // Each getppid is followed by a getuid, and each getuid but the last by
    // a getppid; a bucket may also hold other pairs, never fewer.
    let total: u64 = windows.iter().map(|p| p.total).sum();
    assert!(
        (N..=total).contains(&forth),
        "(getppid, getuid) pairs: {forth}"
    );
    assert!(
        (N - 1..=total).contains(&back),
        "(getuid, getppid) pairs: {back}"
    );
}

#[test]
fn short_lived_processes_counts_are_exact_and_consistent() {
    let Some(_kernel) = kernel_test("short_lived_processes_counts_are_exact_and_consistent") else {
        return;
    };
    // A `/bin/true` forked by a shell with no environment makes about 30
    // calls and usually exits within its first per-CPU batch, which its exit
    // then sends as it is (no map entry); one moved between CPUs takes the
    // map path. Either way its final counts must hold exactly one execve
    // and one exit_group, a total that is the sum of its counts, and one
    // pair fewer than calls (it has one thread). (Spawned from this test,
    // with a locale in its environment, it made 253 calls: too many
    // distinct ones for a batch.)
    const RUNS: usize = 100;
    let mut rec = Recorder::start();
    // No environment, so `/bin/true` loads no locale.
    let shell = Command::new("/bin/sh")
        .env_clear()
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {RUNS} ]; do /bin/true; i=$((i+1)); done"),
        ])
        .spawn()
        .unwrap();
    let sh = shell.id();
    assert!(shell.wait_with_output().unwrap().status.success());
    let trues = |evs: &[Event]| -> Vec<u32> {
        evs.iter()
            .filter(|e| match (&e.detail, &e.process) {
                (Detail::Exec(x), Some(p)) => p.ppid == sh && x.path.as_bytes().ends_with(b"/true"),
                _ => false,
            })
            .filter_map(|e| e.process.as_ref().map(|p| p.pid))
            .collect()
    };
    // Waits for exits, not final windows (see `actor_drain_intervals`).
    rec.until(Duration::from_secs(10), "every exit", |evs| {
        let pids = trues(evs);
        pids.len() == RUNS && pids.iter().all(|&pid| exit_of(evs, pid).is_some())
    });
    let mut totals = Vec::new();
    for pid in trues(&rec.events) {
        let windows = drain_intervals(&rec.events, pid);
        let total: u64 = windows.iter().map(|w| w.total).sum();
        let summed: u64 = windows.iter().flat_map(|w| w.counts.values()).sum();
        let pairs: u64 = windows.iter().flat_map(|w| w.pairs.values()).sum();
        let once = |name| counted(&windows, name);
        assert_eq!(
            (once("execve"), once("exit_group")),
            (1, 1),
            "pid {pid}: {windows:?}"
        );
        assert_eq!(summed, total, "pid {pid}: counts add up to the total");
        assert_eq!(
            pairs,
            total - 1,
            "pid {pid}: one pair per call after the first"
        );
        totals.push(total);
    }
    totals.sort_unstable();
    eprintln!(
        "{RUNS} x /bin/true from a shell: calls per process min {}, median {}, max {}",
        totals[0],
        totals[RUNS / 2],
        totals[RUNS - 1]
    );
}

#[test]
fn processes_exiting_while_counts_drain_are_counted_once() {
    let Some(_kernel) = kernel_test("processes_exiting_while_counts_drain_are_counted_once") else {
        return;
    };
    const CHILDREN: usize = 60;
    const N: u64 = 200_000;
    let mut settings = CaptureSettings::default();
    // Drains as frequent as this make some fall between a thread's exit and
    // the agent reading its exit record: those must count nothing twice.
    settings.counts.drain_every = Duration::from_millis(10);
    let mut rec = Recorder::with_settings(settings);
    let mut children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_actor"))
                .args(["getppid", &N.to_string()])
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    // A process's final window comes before its exit event; it has none if
    // a drain had already read its last calls.
    let exits = |evs: &[Event]| {
        evs.iter()
            .filter(|e| {
                matches!(e.detail, Detail::Exit(_))
                    && e.process.as_ref().is_some_and(|p| pids.contains(&p.pid))
            })
            .count()
    };
    rec.until(Duration::from_secs(60), "every child's exit", |evs| {
        exits(evs) == CHILDREN
    });
    for child in &mut children {
        assert!(child.wait().unwrap().success());
    }
    let actor = env!("CARGO_BIN_EXE_actor");
    let (mut wrong, mut wrong_image) = (Vec::new(), Vec::new());
    let mut drained = 0;
    for &pid in &pids {
        let windows: Vec<_> = rec
            .events
            .iter()
            .filter(|e| e.process.as_ref().is_some_and(|p| p.pid == pid))
            .filter_map(|e| match &e.detail {
                Detail::SyscallCounts(p) => Some((p, e.process.as_ref()?.exe.clone())),
                _ => None,
            })
            .collect();
        // The getppid calls are the new image's: their windows must name it,
        // though the map is read ahead of the exec records (windows wait
        // for the stream).
        if let Some((_, exe)) = windows.iter().find(|(p, exe)| {
            p.counts.contains_key("getppid")
                && exe
                    .as_ref()
                    .is_none_or(|e| e.as_bytes() != actor.as_bytes())
        }) {
            wrong_image.push((pid, exe.clone()));
        }
        let windows: Vec<_> = windows.into_iter().map(|(p, _)| p).collect();
        drained += windows
            .iter()
            .filter(|w| !w.final_counts && w.counts.contains_key("getppid"))
            .count();
        let counted: u64 = windows
            .iter()
            .map(|p| p.counts.get("getppid").copied().unwrap_or(0))
            .sum();
        if counted != N {
            wrong.push((pid, counted, windows.len()));
        }
    }
    eprintln!(
        "{CHILDREN} processes of {N} getppid calls each: {drained} windows read from live processes"
    );
    assert!(drained >= CHILDREN, "the children must live through drains");
    assert!(
        wrong.is_empty(),
        "(pid, getppid counted, windows) of processes not counted exactly once: {wrong:?}"
    );
    assert!(
        wrong_image.is_empty(),
        "windows attributed to another image than {actor}: {wrong_image:?}"
    );
}

#[test]
fn a_full_counts_map_is_counted_and_reported() {
    let Some(_kernel) = kernel_test("a_full_counts_map_is_counted_and_reported") else {
        return;
    };
    const N: u64 = 100_000;
    let mut settings = CaptureSettings::default();
    // One slot, taken by whichever thread makes the first syscall.
    settings.probes.counts_max_threads = 1;
    settings.counts.drain_every = Duration::from_millis(200);
    let mut rec = Recorder::with_settings(settings);
    let status = Command::new(env!("CARGO_BIN_EXE_actor"))
        .args(["getppid", &N.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    rec.until(Duration::from_secs(10), "the loss report", |evs| {
        evs.iter().any(|e| match &e.detail {
            Detail::Loss(loss) => loss.totals.get("uncounted_syscalls").copied().unwrap_or(0) >= N,
            _ => false,
        })
    });
    let totals = rec.capture().loss_totals();
    eprintln!("one-slot counts map, {N} getppid calls by a thread without a slot: {totals:?}");
    assert!(totals.get("counts_map_full").copied().unwrap_or(0) > 0);
}
