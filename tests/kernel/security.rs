//! Security-relevant events: each test makes a helper process (`actor`) do
//! one thing and asserts the decoded arguments of the event it caused.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use monitor::{
    capture::CaptureSettings,
    event::{Detail, Event, SyscallDetail},
    kernel::{Sensor, SensorState},
    sensitive::SensitivePaths,
};
use monitor_tests::{Recorder, kernel_test, token};

const WAIT: Duration = Duration::from_secs(10);

fn actor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_actor"))
}

/// Spawns the actor and waits for it; returns its pid and stdout.
fn act_pid(args: &[&str]) -> (u32, String) {
    let child = actor()
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn actor");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "actor {args:?} failed: {:?}",
        out.status
    );
    (pid, String::from_utf8(out.stdout).unwrap())
}

fn by_pid<'a>(events: &'a [Event], pid: u32, kind: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.kind() == kind && e.process.as_ref().is_some_and(|p| p.pid == pid))
        .collect()
}

fn wait_kind(rec: &mut Recorder, pid: u32, kind: &'static str) -> Event {
    rec.until(WAIT, kind, |evs| !by_pid(evs, pid, kind).is_empty());
    by_pid(&rec.events, pid, kind)[0].clone()
}

/// Every event carries the process context from the table.
fn assert_context(e: &Event, pid: u32) {
    let p = e.process.as_ref().expect("process context");
    assert_eq!(p.pid, pid);
    assert_eq!(p.ppid, std::process::id(), "actor's parent is this test");
    assert!(
        p.exe
            .as_ref()
            .is_some_and(|x| x.as_bytes().ends_with(b"/actor")),
        "exe from the process table: {:?}",
        p.exe
    );
    assert_ne!(p.cgroup_id, 0, "cgroup id");
}

#[test]
fn connect_reports_family_address_and_port() {
    let Some(_k) = kernel_test("connect_reports_family_address_and_port") else {
        return;
    };
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let dir = std::env::temp_dir().join(token("unix"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("s.sock");
    let _unix = UnixListener::bind(&sock_path).unwrap();
    let mut rec = Recorder::start();

    let port = v4.local_addr().unwrap().port();
    let (pid, _) = act_pid(&["connect", &port.to_string()]);
    let e = wait_kind(&mut rec, pid, "connect");
    assert_context(&e, pid);
    let Detail::Connect(n) = &e.detail else {
        unreachable!()
    };
    assert_eq!(
        (n.family.as_str(), n.address.as_deref(), n.port, n.result),
        ("inet", Some("127.0.0.1"), Some(port), 0)
    );
    assert_eq!(
        n.sock_type.as_deref(),
        None,
        "connect reads the caller's sockaddr only"
    );

    let port6 = v6.local_addr().unwrap().port();
    let (pid, _) = act_pid(&["connect6", &port6.to_string()]);
    let e = wait_kind(&mut rec, pid, "connect");
    let Detail::Connect(n) = &e.detail else {
        unreachable!()
    };
    assert_eq!(
        (n.family.as_str(), n.address.as_deref(), n.port),
        ("inet6", Some("::1"), Some(port6))
    );

    let (pid, _) = act_pid(&["connect-unix", sock_path.to_str().unwrap()]);
    let e = wait_kind(&mut rec, pid, "connect");
    let Detail::Connect(n) = &e.detail else {
        unreachable!()
    };
    assert_eq!(n.family, "unix");
    assert_eq!(
        n.unix_path.as_ref().unwrap().as_bytes(),
        sock_path.as_os_str().as_encoded_bytes()
    );

    let (pid, _) = act_pid(&["udp", "9"]);
    let e = wait_kind(&mut rec, pid, "connect");
    let Detail::Connect(n) = &e.detail else {
        unreachable!()
    };
    assert_eq!((n.address.as_deref(), n.port), (Some("127.0.0.1"), Some(9)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_sockaddr_pointer_is_reported_as_unreadable_not_empty() {
    let Some(_k) = kernel_test("a_bad_sockaddr_pointer_is_reported_as_unreadable_not_empty") else {
        return;
    };
    let mut rec = Recorder::start();
    let (pid, _) = act_pid(&["connect-badaddr"]);
    let e = wait_kind(&mut rec, pid, "connect");
    let Detail::Connect(n) = &e.detail else {
        unreachable!()
    };
    assert_eq!(n.result, -libc::EFAULT);
    assert!(
        n.incomplete
            .as_deref()
            .is_some_and(|t| t.contains("unreadable")),
        "{n:?}"
    );
    rec.stop();
    let faults = rec.capture().fault_totals();
    assert!(
        faults.get("user_read_fault.net").copied().unwrap_or(0) >= 1,
        "{faults:?}"
    );
}

#[test]
fn bind_listen_and_accept_report_the_socket() {
    let Some(_k) = kernel_test("bind_listen_and_accept_report_the_socket") else {
        return;
    };
    let mut rec = Recorder::start();
    let mut server = actor().arg("serve").stdout(Stdio::piped()).spawn().unwrap();
    let pid = server.id();
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    client.write_all(b"hi").unwrap();
    assert!(server.wait().unwrap().success());

    let bind = wait_kind(&mut rec, pid, "bind");
    let Detail::Bind(b) = &bind.detail else {
        unreachable!()
    };
    assert_eq!((b.address.as_deref(), b.result), (Some("127.0.0.1"), 0));
    let listen = wait_kind(&mut rec, pid, "listen");
    let Detail::Listen(l) = &listen.detail else {
        unreachable!()
    };
    assert_eq!(
        (l.address.as_deref(), l.port, l.sock_type.as_deref()),
        (Some("127.0.0.1"), Some(port), Some("stream"))
    );
    assert!(l.backlog.is_some_and(|b| b > 0));
    let accept = wait_kind(&mut rec, pid, "accept");
    let Detail::Accept(a) = &accept.detail else {
        unreachable!()
    };
    assert_eq!(a.address.as_deref(), Some("127.0.0.1"));
    assert_eq!(a.port, Some(client_port), "remote port is the client's");
    assert_eq!(a.local_port, Some(port));
    assert!(a.result >= 0, "the new fd");
}

struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(token(name));
        for d in ["secret", "persist", "plain"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("secret/key"), b"k").unwrap();
        std::fs::write(root.join("plain/data"), b"d").unwrap();
        Self { root }
    }
    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_str().unwrap().to_owned()
    }
    fn settings(&self) -> CaptureSettings {
        CaptureSettings {
            sensitive: SensitivePaths::new(&[self.path("secret")], &[self.path("persist")])
                .unwrap(),
            ..Default::default()
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn file_events(events: &[Event], pid: u32) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| {
            e.kind().starts_with("file_") && e.process.as_ref().is_some_and(|p| p.pid == pid)
        })
        .collect()
}

#[test]
fn file_writes_and_sensitive_reads_are_reported_with_kernel_paths() {
    let Some(_k) = kernel_test("file_writes_and_sensitive_reads_are_reported_with_kernel_paths")
    else {
        return;
    };
    let sandbox = Sandbox::new("files");
    let mut rec = Recorder::with_settings(sandbox.settings());

    let (pid, _) = act_pid(&["write", &sandbox.path("persist/new.conf")]);
    let e = wait_kind(&mut rec, pid, "file_open");
    assert_context(&e, pid);
    let Detail::FileOpen(f) = &e.detail else {
        unreachable!()
    };
    assert_eq!(
        f.path.as_bytes(),
        sandbox.path("persist/new.conf").as_bytes()
    );
    assert!(f.write && f.sensitive && f.result >= 0);
    assert!(
        f.flags.iter().any(|x| x == "O_CREAT") && f.flags.iter().any(|x| x == "O_TRUNC"),
        "{:?}",
        f.flags
    );

    // A read under a sensitive location: matched in the kernel by inode.
    let (pid, _) = act_pid(&["read", &sandbox.path("secret/key")]);
    let e = wait_kind(&mut rec, pid, "file_open");
    let Detail::FileOpen(f) = &e.detail else {
        unreachable!()
    };
    assert_eq!(f.path.as_bytes(), sandbox.path("secret/key").as_bytes());
    assert!(f.sensitive && !f.write);

    // A refused open: the file was not opened, so the name comes from the
    // caller's memory, read back at the syscall's exit.
    std::fs::set_permissions(
        sandbox.path("secret/key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (pid, errno) = act_pid(&["read-as", "65534", &sandbox.path("secret/key")]);
    assert_eq!(
        errno.trim(),
        libc::EACCES.to_string(),
        "the open was refused"
    );
    let e = wait_kind(&mut rec, pid, "file_open");
    let Detail::FileOpen(f) = &e.detail else {
        unreachable!()
    };
    assert_eq!(f.path.as_bytes(), sandbox.path("secret/key").as_bytes());
    assert_eq!(f.result, -libc::EACCES, "{f:?}");
    assert!(!f.write, "{f:?}");
    assert!(f.flags.iter().any(|x| x == "O_CLOEXEC"), "{:?}", f.flags);

    // A read elsewhere is not reported; a write elsewhere is (not sensitive).
    let (quiet, _) = act_pid(&["read", &sandbox.path("plain/data")]);
    let (plain_write, _) = act_pid(&["write", &sandbox.path("plain/out")]);
    let e = wait_kind(&mut rec, plain_write, "file_open");
    let Detail::FileOpen(f) = &e.detail else {
        unreachable!()
    };
    assert!(f.write && !f.sensitive);
    assert!(
        file_events(&rec.events, quiet).is_empty(),
        "a plain read is not an event"
    );

    // unlink and rename of sensitive files; relative names join the cwd.
    std::fs::write(sandbox.path("persist/a"), b"a").unwrap();
    std::fs::write(sandbox.path("persist/b"), b"b").unwrap();
    let (pid, _) = act_pid(&[
        "rename",
        &sandbox.path("persist/a"),
        &sandbox.path("persist/c"),
    ]);
    let e = wait_kind(&mut rec, pid, "file_rename");
    let Detail::FileRename(f) = &e.detail else {
        unreachable!()
    };
    assert_eq!(f.path.as_bytes(), sandbox.path("persist/a").as_bytes());
    assert_eq!(
        f.new_path.as_ref().unwrap().as_bytes(),
        sandbox.path("persist/c").as_bytes()
    );
    assert!(f.sensitive);
    let (pid, _) = act_pid(&["unlink-relative", &sandbox.path("persist"), "b"]);
    let e = wait_kind(&mut rec, pid, "file_unlink");
    let Detail::FileUnlink(f) = &e.detail else {
        unreachable!()
    };
    assert_eq!(
        f.path.as_bytes(),
        sandbox.path("persist/b").as_bytes(),
        "cwd-relative name resolved"
    );

    // A non-sensitive unlink is filtered, not reported.
    let (pid, _) = act_pid(&["unlink", &sandbox.path("plain/data")]);
    rec.collect_for(Duration::from_millis(500));
    assert!(by_pid(&rec.events, pid, "file_unlink").is_empty());
}

#[test]
fn memfd_create_and_fileless_exec() {
    let Some(_k) = kernel_test("memfd_create_and_fileless_exec") else {
        return;
    };
    let mut rec = Recorder::start();
    let child = actor().arg("memfd-exec").spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let e = wait_kind(&mut rec, pid, "memfd_create");
    let Detail::MemfdCreate(m) = &e.detail else {
        unreachable!()
    };
    assert_eq!(m.name.as_bytes(), b"actor-payload");
    assert!(m.result >= 0);
    rec.until(WAIT, "fileless exec", |evs| {
        evs.iter().any(|e| {
            matches!(&e.detail, Detail::Exec(x) if x.fileless)
                && e.process.as_ref().is_some_and(|p| p.pid == pid)
        })
    });
    let exec = rec
        .events
        .iter()
        .find(|e| matches!(&e.detail, Detail::Exec(x) if x.fileless))
        .unwrap();
    let Detail::Exec(x) = &exec.detail else {
        unreachable!()
    };
    assert!(
        x.path.as_bytes().starts_with(b"/memfd:actor-payload"),
        "{:?}",
        x.path
    );
    assert_eq!(x.args[0].as_bytes(), b"fileless-true");
    // The image it replaced (the actor) is its parent.
    assert!(
        exec.parent
            .as_ref()
            .unwrap()
            .exe
            .as_ref()
            .unwrap()
            .as_bytes()
            .ends_with(b"/actor")
    );
}

#[test]
fn setuid_in_a_child_is_a_credential_change() {
    let Some(_k) = kernel_test("setuid_in_a_child_is_a_credential_change") else {
        return;
    };
    let mut rec = Recorder::start();
    let (pid, _) = act_pid(&["setuid", "65534"]);
    let e = wait_kind(&mut rec, pid, "cred_change");
    let Detail::CredChange(c) = &e.detail else {
        unreachable!()
    };
    assert_eq!(c.syscall, "setuid");
    assert_eq!(c.args, vec![65534]);
    assert_eq!(c.old_uids, [0, 0, 0]);
    assert_eq!(c.new_uids, [65534, 65534, 65534]);
    assert_eq!(c.result, 0);
    assert_ne!(c.old_caps, c.new_caps, "root loses its capabilities");
}

#[test]
fn a_credential_call_that_changes_nothing_is_not_reported_but_a_refused_one_is() {
    let Some(_k) =
        kernel_test("a_credential_call_that_changes_nothing_is_not_reported_but_a_refused_one_is")
    else {
        return;
    };
    let mut rec = Recorder::start();
    let (pid, _) = act_pid(&["setuid-noop-refused", "65534"]);
    // The refused setuid(0) is the actor's last credential call.
    rec.until(WAIT, "the refused setuid(0)", |evs| {
        by_pid(evs, pid, "cred_change").iter().any(
            |e| matches!(&e.detail, Detail::CredChange(c) if c.args == vec![0] && c.result != 0),
        )
    });
    let calls: Vec<(String, Vec<i64>, i32)> = by_pid(&rec.events, pid, "cred_change")
        .iter()
        .map(|e| match &e.detail {
            Detail::CredChange(c) => (c.syscall.clone(), c.args.clone(), c.result),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            ("setuid".to_owned(), vec![65534], 0),
            ("setuid".to_owned(), vec![0], -1),
        ],
        "the no-op setresuid(-1, 0, -1) is not a change; the refused setuid(0) is reported"
    );
}

fn sleeper() -> Child {
    Command::new("/bin/sleep").arg("30").spawn().unwrap()
}

#[test]
fn ptrace_attach_and_kill_name_their_target() {
    let Some(_k) = kernel_test("ptrace_attach_and_kill_name_their_target") else {
        return;
    };
    let mut rec = Recorder::start();
    let mut target = sleeper();
    let tpid = target.id().to_string();
    let (pid, _) = act_pid(&["ptrace", &tpid]);
    let e = wait_kind(&mut rec, pid, "ptrace");
    let Detail::Ptrace(p) = &e.detail else {
        unreachable!()
    };
    assert_eq!(
        (p.request.as_str(), p.target_pid, p.result),
        ("PTRACE_ATTACH", target.id() as i32, 0)
    );

    let (pid, _) = act_pid(&["kill", &tpid, "15"]);
    let e = wait_kind(&mut rec, pid, "kill");
    let Detail::Kill(k) = &e.detail else {
        unreachable!()
    };
    assert_eq!(
        (k.target_pid, k.signal, k.signal_name.as_str(), k.result),
        (target.id() as i32, 15, "SIGTERM", 0)
    );
    let _ = target.kill();
    let _ = target.wait();
}

#[test]
fn bpf_program_loads_by_other_processes() {
    let Some(_k) = kernel_test("bpf_program_loads_by_other_processes") else {
        return;
    };
    let mut rec = Recorder::start();
    let (pid, _) = act_pid(&["bpf-load"]);
    let e = wait_kind(&mut rec, pid, "bpf_load");
    let Detail::BpfLoad(b) = &e.detail else {
        unreachable!()
    };
    assert_eq!(
        (b.prog_type.as_str(), b.prog_name.as_bytes(), b.insn_count),
        ("socket_filter", &b"actor_prog"[..], 2)
    );
    assert!(b.result >= 0);
}

/// Issue 20, item 6: another process (root) takes a handle on one of the
/// agent's own maps by id and writes into it, as `bpftool map update id N`
/// would: both calls are reported, naming the map. The same calls on a map
/// of the process's own are not.
#[test]
fn bpf_calls_on_the_agents_own_maps_are_reported() {
    let Some(_k) = kernel_test("bpf_calls_on_the_agents_own_maps_are_reported") else {
        return;
    };
    let mut rec = Recorder::start();
    // The map that lists the agent's objects: harmless to add key 0 to.
    let held = monitor::kernel::own_objects::held().unwrap();
    let target = aya::maps::loaded_maps()
        .flatten()
        .find(|m| {
            m.name_as_str() == Some("AGENT_OBJECTS")
                && held.contains(&(monitor_common::agent_object::MAP, m.id()))
        })
        .expect("the capture's AGENT_OBJECTS map")
        .id();
    let (own_pid, own_out) = act_pid(&["bpf-map-update-by-id", "own"]);
    let (pid, _) = act_pid(&["bpf-map-update-by-id", &target.to_string()]);
    rec.until(WAIT, "both bpf calls on the agent's map", |evs| {
        by_pid(evs, pid, "bpf_load").len() >= 2
    });
    let calls: Vec<(Option<String>, Option<String>, i32)> = by_pid(&rec.events, pid, "bpf_load")
        .iter()
        .filter_map(|e| match &e.detail {
            Detail::BpfLoad(b) => Some((b.command.clone(), b.agent_object.clone(), b.result)),
            _ => None,
        })
        .collect();
    eprintln!("reported: {calls:?}");
    let map = Some(format!("map {target}"));
    assert!(
        calls.contains(&(Some("map_get_fd_by_id".into()), map.clone(), calls[0].2))
            && calls[0].2 >= 0,
        "{calls:?}"
    );
    assert!(
        calls.contains(&(Some("map_update_elem".into()), map, 0)),
        "{calls:?}"
    );
    assert!(
        by_pid(&rec.events, own_pid, "bpf_load").is_empty(),
        "calls on map {} of the actor's own are not the agent's business: {:?}",
        own_out.trim(),
        by_pid(&rec.events, own_pid, "bpf_load")
    );
}

/// Issue 20, item 6: as nobody, a process opens a file 50 times through an
/// io_uring ring, never calling open(2). The submissions are reported as
/// `io_uring_openat`, at most once a second, with how many each covers.
#[test]
fn opens_submitted_through_io_uring_are_reported() {
    let Some(_k) = kernel_test("opens_submitted_through_io_uring_are_reported") else {
        return;
    };
    let tracepoints = ["io_uring_submit_req", "io_uring_submit_sqe"];
    if !tracepoints.iter().any(|t| {
        std::path::Path::new("/sys/kernel/tracing/events/io_uring")
            .join(t)
            .is_dir()
    }) {
        eprintln!(
            "SKIPPED opens_submitted_through_io_uring_are_reported: this kernel has no io_uring submit tracepoint (CONFIG_IO_URING unset), so no ring can submit anything"
        );
        return;
    }
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "2")
    {
        eprintln!(
            "SKIPPED opens_submitted_through_io_uring_are_reported: io_uring is disabled on this host (kernel.io_uring_disabled = 2), so no ring can submit anything"
        );
        return;
    }
    let mut rec = Recorder::start();
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_actor"))
        .args(["io-uring-openat", "/etc/hostname", "50"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(said, "opened 50", "the ring opened the file");
    let uring_opens = |evs: &[Event]| -> Vec<SyscallDetail> {
        by_pid(evs, pid, "syscall")
            .into_iter()
            .filter_map(|e| match &e.detail {
                Detail::Syscall(s) if s.syscall == "io_uring_openat" => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    rec.until(WAIT, "the ring's opens", |evs| !uring_opens(evs).is_empty());
    let reports = uring_opens(&rec.events);
    eprintln!("io_uring opens reported: {reports:?}");
    assert_eq!(reports[0].args[0], 18, "IORING_OP_OPENAT");
    assert_eq!(
        rec.events
            .iter()
            .filter(|e| e
                .process
                .as_ref()
                .is_some_and(|p| p.pid == pid && p.uid == 65534))
            .filter(|e| matches!(&e.detail, Detail::Syscall(s) if s.syscall == "io_uring_openat"))
            .count(),
        reports.len(),
        "reported as nobody's"
    );
    // 50 opens in well under a second: one report, covering the first.
    assert!(reports.len() <= 2, "rate-limited: {reports:?}");
}

#[test]
fn anonymous_memory_made_executable() {
    let Some(_k) = kernel_test("anonymous_memory_made_executable") else {
        return;
    };
    let mut rec = Recorder::start();
    let (pid, out) = act_pid(&["mmap-exec"]);
    let addrs: Vec<&str> = out.lines().collect();
    rec.until(WAIT, "mmap and mprotect", |evs| {
        by_pid(evs, pid, "mem_exec").len() >= 2
    });
    let events = by_pid(&rec.events, pid, "mem_exec");
    let mprotect = events
        .iter()
        .find_map(|e| match &e.detail {
            Detail::MemExec(m) if m.syscall == "mprotect" => Some(m),
            _ => None,
        })
        .expect("mprotect event");
    assert_eq!(mprotect.address, addrs[1]);
    assert!(mprotect.prot.contains(&"PROT_EXEC".to_owned()));
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.detail, Detail::MemExec(m) if m.syscall == "mmap"))
    );
}

/// Issue 20, item 6: as nobody, a file written moments ago is mapped
/// executable (a dropped library) and then run; the kernel recognises both
/// as code from a fresh write and names the writer. Mapping an installed
/// binary is not reported.
#[test]
fn a_freshly_written_file_mapped_or_run_as_code_is_reported_with_its_writer() {
    let Some(_k) =
        kernel_test("a_freshly_written_file_mapped_or_run_as_code_is_reported_with_its_writer")
    else {
        return;
    };
    use std::os::unix::fs::PermissionsExt as _;
    let dir = monitor_tests::test_dir("fresh-code");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dropped = dir.join("dropped.so");
    let mut rec = Recorder::start();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_actor"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn actor");
        let pid = out.id();
        let out = out.wait_with_output().unwrap();
        assert!(out.status.success(), "actor {args:?}: {:?}", out.status);
        pid
    };
    // An installed binary, mapped the same way: not recently written.
    let installed = as_nobody(&["map-exec-file", "/bin/true"]);
    let dropper = as_nobody(&["drop-and-map", dropped.to_str().unwrap()]);
    let written = |e: &Event| match &e.detail {
        Detail::MemExec(m) => m.file.clone(),
        _ => None,
    };
    rec.until(WAIT, "the mapping of the dropped file", |evs| {
        by_pid(evs, dropper, "mem_exec")
            .iter()
            .any(|e| written(e).is_some())
    });
    let file = by_pid(&rec.events, dropper, "mem_exec")
        .into_iter()
        .find_map(written)
        .unwrap();
    eprintln!("mapped: {file:?}");
    assert_eq!(file.path.as_bytes(), dropped.as_os_str().as_encoded_bytes());
    assert_eq!((file.written_by_pid, file.written_by_uid), (dropper, 65534));
    assert!(file.written_ms_before < 10_000, "{file:?}");
    assert!(
        by_pid(&rec.events, installed, "mem_exec").is_empty(),
        "mapping /bin/true is not code from a fresh write: {:?}",
        by_pid(&rec.events, installed, "mem_exec")
    );
    // Run it, as nobody: the exec says the file was just written.
    let ran = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&dropped)
        .spawn()
        .unwrap();
    let ran_pid = ran.id();
    assert!(ran.wait_with_output().unwrap().status.success());
    let exec_of_dropped = |evs: &[Event]| {
        by_pid(evs, ran_pid, "exec")
            .into_iter()
            .find_map(|e| match &e.detail {
                Detail::Exec(x) if x.path.as_bytes() == dropped.as_os_str().as_encoded_bytes() => {
                    Some(x.clone())
                }
                _ => None,
            })
    };
    rec.until(WAIT, "the exec of the dropped file", |evs| {
        exec_of_dropped(evs).is_some()
    });
    let exec = exec_of_dropped(&rec.events).unwrap();
    assert!(exec.recently_written, "{exec:?}");
    // setpriv itself ran from an installed file.
    assert!(
        !by_pid(&rec.events, ran_pid, "exec").iter().any(|e| matches!(
            &e.detail,
            Detail::Exec(x) if x.recently_written && x.path.as_bytes() != dropped.as_os_str().as_encoded_bytes()
        )),
        "only the dropped file was recently written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn module_load_attempts_are_reported() {
    let Some(_k) = kernel_test("module_load_attempts_are_reported") else {
        return;
    };
    // Module loads are watched at the syscall's exit tracepoint; a kernel
    // built without module support (CONFIG_MODULES unset) has neither the
    // syscall nor the tracepoint, and no module can ever load on it.
    if !std::path::Path::new("/sys/kernel/tracing/events/syscalls/sys_exit_finit_module").exists() {
        eprintln!(
            "SKIPPED module_load_attempts_are_reported: this kernel has no module syscalls (CONFIG_MODULES unset), \
             so module loads cannot happen here and there is nothing to observe"
        );
        return;
    }
    let mut rec = Recorder::start();
    // finit_module of /dev/null: refused (not a module). The attempt itself
    // is what an attacker's rootkit loader would do.
    let (pid, _) = act_pid(&["finit-module", "/dev/null"]);
    let e = wait_kind(&mut rec, pid, "module_load");
    let Detail::ModuleLoad(m) = &e.detail else {
        unreachable!()
    };
    assert_eq!(m.syscall, "finit_module");
    assert_eq!(
        m.path.as_ref().map(|p| p.as_bytes()),
        Some(&b"/dev/null"[..])
    );
    assert_eq!(m.params.as_bytes(), b"actor.params=1");
    assert!(m.result < 0, "refused: {}", m.result);
}

#[test]
fn every_sensor_attaches() {
    let Some(_k) = kernel_test("every_sensor_attaches") else {
        return;
    };
    let rec = Recorder::start();
    let sensors = rec.capture().probes().sensors();
    assert_eq!(sensors.len(), 3);
    for (sensor, state) in sensors {
        assert_eq!(state, &SensorState::Attached, "{}", sensor.name());
    }
    let attached = rec.capture().probes().attached();
    let exits: Vec<&str> = attached
        .iter()
        .filter(|s| s.sensor == Sensor::Security)
        .map(|s| match s.hook {
            monitor::kernel::Hook::Tracepoint(_, name) => name,
            other => panic!("security hook {other} is not a syscall exit tracepoint"),
        })
        .collect();
    // Three lifecycle hooks, the switch-out flush of counted calls, the raw
    // sys_enter, and one exit tracepoint per watched syscall this kernel has.
    assert_eq!(attached.len(), 5 + exits.len());
    assert!(
        attached
            .iter()
            .any(|s| matches!(s.hook, monitor::kernel::Hook::BtfTracepoint("sched_switch"))),
        "sched_switch not attached"
    );
    drop(rec);
    // With counts off, sys_enter stays for the security stash, but the
    // switch-out flush has nothing to flush and is not attached.
    let mut settings = CaptureSettings::default();
    settings.probes.syscall_counts = false;
    let rec = Recorder::with_settings(settings);
    let hooks: Vec<_> = rec
        .capture()
        .probes()
        .attached()
        .iter()
        .map(|s| s.hook)
        .collect();
    assert!(hooks.contains(&monitor::kernel::Hook::BtfTracepoint("sys_enter")));
    assert!(
        !hooks.contains(&monitor::kernel::Hook::BtfTracepoint("sched_switch")),
        "{hooks:?}"
    );
    for wanted in [
        "sys_exit_connect",
        "sys_exit_openat",
        "sys_exit_setuid",
        "sys_exit_ptrace",
        "sys_exit_memfd_create",
        "sys_exit_accept4",
    ] {
        assert!(exits.contains(&wanted), "{wanted} not attached: {exits:?}");
    }
}

/// Issue 20, item 6: syscalls that reach into other processes, change
/// mounts and namespaces, or bypass the syscall sensors are reported, one
/// by one, with their arguments and results (each made by the actor).
#[test]
fn r20_syscalls_the_sensors_did_not_watch_are_reported() {
    let Some(_k) = kernel_test("r20_syscalls_the_sensors_did_not_watch_are_reported") else {
        return;
    };
    let mut rec = Recorder::start();
    let dir = monitor_tests::test_dir("watched-syscalls");
    let mountpoint = dir.join("mnt");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mp = mountpoint.to_str().unwrap().to_owned();
    let cases: Vec<(&str, Option<String>, bool)> = vec![
        ("process_vm_readv", None, false),
        ("process_vm_writev", None, false),
        ("pidfd_getfd", None, false),
        ("pidfd_send_signal", Some("child".into()), false),
        ("rt_sigqueueinfo", Some("child".into()), false),
        ("rt_tgsigqueueinfo", Some("child".into()), false),
        ("unshare", None, false),
        ("mount", Some(mp.clone()), true),
        ("umount2", Some(mp.clone()), true),
        ("setns", None, false),
        ("pivot_root", Some(mp.clone()), true),
        ("io_uring_setup", None, false),
    ];
    let mut seen = Vec::new();
    for (name, target, names_path) in cases {
        let mut child = None;
        let target = match target.as_deref() {
            Some("child") => {
                let c = sleeper();
                let pid = c.id().to_string();
                child = Some(c);
                Some(pid)
            }
            other => other.map(str::to_owned),
        };
        let mut args = vec!["syscall", name];
        if let Some(t) = &target {
            args.push(t);
        }
        let (pid, out) = act_pid(&args);
        // (mount and umount2 first make the actor's mounts private: the
        // call asked for is the one naming the test's mount point.)
        let wanted = |e: &Event| {
            e.process.as_ref().is_some_and(|p| p.pid == pid)
                && matches!(&e.detail, Detail::Syscall(s) if s.syscall == name
                    && (!names_path || s.path.as_ref().is_some_and(|p| p.to_string_lossy() == mp)))
        };
        rec.until(WAIT, name, |evs| evs.iter().any(wanted));
        let e = rec.events.iter().find(|e| wanted(e)).unwrap();
        let Detail::Syscall(s) = &e.detail else {
            unreachable!()
        };
        assert_eq!(
            out.trim(),
            format!("{name} returned {}", s.result),
            "the result the kernel saw is the one the call returned"
        );
        if names_path {
            assert_eq!(
                s.path.as_ref().map(|p| p.to_string_lossy().into_owned()),
                Some(mp.clone())
            );
        }
        if let Some(t) = target.as_deref().filter(|_| child.is_some()) {
            let target_pid: u64 = t.parse().unwrap();
            assert!(
                s.args.contains(&target_pid) || name == "pidfd_send_signal",
                "{name}: {:?}",
                s.args
            );
        }
        seen.push(format!("{name}={}", s.result));
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    eprintln!("reported: {}", seen.join(" "));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 20, item 6: hard and symbolic links made into sensitive places are
/// reported as sensitive, with where they land.
#[test]
fn r20_links_into_sensitive_places_are_reported() {
    let Some(_k) = kernel_test("r20_links_into_sensitive_places_are_reported") else {
        return;
    };
    let mut rec = Recorder::start();
    let source =
        std::path::PathBuf::from(format!("/etc/monitor-test-source-{}", std::process::id()));
    std::fs::write(&source, b"x").unwrap();
    let hard = format!("/etc/monitor-test-hardlink-{}", std::process::id());
    let soft = format!("/etc/cron.d/monitor-test-symlink-{}", std::process::id());
    for (name, arg, kind, landed) in [
        (
            "link",
            format!("{} {hard}", source.display()),
            "file_link",
            hard.clone(),
        ),
        (
            "symlink",
            format!("/tmp/anything {soft}"),
            "file_symlink",
            soft.clone(),
        ),
    ] {
        let (pid, out) = act_pid(&["syscall", name, &arg]);
        assert_eq!(out.trim(), format!("{name} returned 0"));
        let e = wait_kind(&mut rec, pid, kind);
        let (Detail::FileLink(f) | Detail::FileSymlink(f)) = &e.detail else {
            unreachable!()
        };
        assert!(f.sensitive, "{name} into a sensitive place: {f:?}");
        let where_ = match kind {
            "file_link" => f.new_path.as_ref().unwrap(),
            _ => &f.path,
        };
        assert_eq!(where_.to_string_lossy(), landed, "{f:?}");
        if kind == "file_symlink" {
            assert_eq!(
                f.new_path.as_ref().unwrap().to_string_lossy(),
                "/tmp/anything"
            );
        }
    }
    for p in [source.to_str().unwrap(), &hard, &soft] {
        let _ = std::fs::remove_file(p);
    }
}
