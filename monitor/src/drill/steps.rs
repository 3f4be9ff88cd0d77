//! What each drill does. Every drill runs in a process of its own (`monitor
//! drill-step NAME`), so everything it starts descends from one root the
//! runner knows, and its findings can be told from everything else.
//!
//! Rules every step keeps: it touches no existing user data (files it writes
//! are new, uniquely named, and removed before it returns; what it reads it
//! discards), it waits for every process it starts, and the signals and
//! ptrace it aims at the agent are harmless (`SIGCONT`, a seize detached at
//! once). Drills run as root while other users watch: every file is created
//! new (`O_EXCL`, `O_NOFOLLOW`), never opened if someone put a file or a
//! symlink at its name first, a file is removed only if the drill made it,
//! and the only program a drill runs that it wrote is under the runner's
//! private `mkdtemp` directory.

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::{
        fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{Doing as _, DrillError};

/// What a step needs to know.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// A private directory for the step's files (removed by the runner).
    pub sandbox: PathBuf,
    /// A tag unique to this run, used in every name the step creates.
    pub tag: String,
    /// The agent's pid (for the tampering drill).
    pub agent_pid: Option<u32>,
    /// The agent's state directory (for the tampering drill).
    pub state_dir: PathBuf,
}

/// Runs drill `name`.
pub fn run(name: &str, ctx: &StepContext) -> Result<(), DrillError> {
    match name {
        "webshell" => webshell(),
        "reverse-shell" => reverse_shell(),
        "credential-files" => credential_files(ctx),
        "persistence" => persistence(ctx),
        "memfd-exec" => memfd_exec(),
        "download-exec" => download_exec(ctx),
        "privesc-probe" => privesc_probe(),
        "log-tamper" => log_tamper(ctx),
        "discovery-burst" => discovery_burst(),
        "agent-tamper" => agent_tamper(ctx),
        other => Err(DrillError::Step(format!("no drill named {other:?}"))),
    }
}

/// Runs a shell script, output discarded; its exit status does not matter
/// (discovery commands may be missing on a minimal host).
fn sh(script: &str) -> Result<(), DrillError> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .doing("cannot run /bin/sh")?;
    Ok(())
}

/// Creates a new file with `content`: refused if anything (a file, a
/// symlink) is already at `path`, so nothing another user planted is
/// written through.
fn create_new(path: &Path, content: &[u8], mode: u32) -> Result<(), DrillError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
        .doing(format!(
            "cannot create {} (something is already there?)",
            path.display()
        ))?;
    file.write_all(content)
        .doing(format!("cannot write {}", path.display()))
}

/// Removes files even if the step fails half-way.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            if p.is_dir() {
                let _ = std::fs::remove_dir(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A "web server" that runs the command in a request with a shell: what a
/// web shell or a command injection does. The shell then looks around.
fn webshell() -> Result<(), DrillError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"GET /cgi-bin/status?cmd=id%3Buname%20-a HTTP/1.0\r\n\r\n")?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)?;
        Ok(reply)
    });
    let (mut conn, _) = listener.accept()?;
    let mut request = [0u8; 512];
    let _ = conn.read(&mut request)?;
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("id; uname -a; hostname; cat /etc/os-release; ls /")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .doing("cannot run /bin/sh")?;
    conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n")?;
    conn.write_all(&out.stdout)?;
    drop(conn);
    client
        .join()
        .map_err(|_| DrillError::Step("client thread panicked".into()))??;
    Ok(())
}

/// A shell whose input and output are a TCP connection it made itself to
/// a listener ("the attacker"), which sends it commands.
fn reverse_shell() -> Result<(), DrillError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut cmd = Command::new("/bin/sh");
    // SAFETY: only async-signal-safe calls (socket, connect, dup2) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                },
                sin_zero: [0; 8],
            };
            if libc::connect(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().doing("cannot start the reverse shell")?;
    let (mut conn, _) = listener.accept()?;
    conn.write_all(b"id\nuname -a\nhostname\nexit\n")?;
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    child.wait()?;
    Ok(())
}

/// Reads password hashes and a private key (a decoy the step plants, so no
/// real key is read).
fn credential_files(ctx: &StepContext) -> Result<(), DrillError> {
    let ssh = Path::new("/root/.ssh");
    let mut cleanup = Cleanup(Vec::new());
    if !ssh.exists() {
        std::fs::create_dir(ssh).doing("cannot create /root/.ssh")?;
        std::fs::set_permissions(ssh, std::fs::Permissions::from_mode(0o700))?;
        cleanup.0.push(ssh.to_owned());
    }
    let key = ssh.join(format!("id_{}", ctx.tag));
    create_new(
        &key,
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nmonitor drill decoy, not a key\n-----END OPENSSH PRIVATE KEY-----\n",
        0o600,
    )?;
    cleanup.0.push(key.clone());
    sh(&format!(
        "cat /etc/shadow > /dev/null; cat /etc/gshadow > /dev/null; cat {} > /dev/null",
        key.display()
    ))
}

/// Persistence: a cron job, a systemd unit and an SSH authorized key, all
/// new files (inert: a comment, a unit never enabled, a decoy key) removed
/// at once.
fn persistence(ctx: &StepContext) -> Result<(), DrillError> {
    let mut cleanup = Cleanup(Vec::new());
    let ssh = Path::new("/root/.ssh");
    if !ssh.exists() {
        std::fs::create_dir(ssh).doing("cannot create /root/.ssh")?;
        std::fs::set_permissions(ssh, std::fs::Permissions::from_mode(0o700))?;
        cleanup.0.push(ssh.to_owned());
    }
    let mut targets = Vec::new();
    if Path::new("/etc/cron.d").is_dir() {
        targets.push((
            PathBuf::from(format!("/etc/cron.d/{}", ctx.tag)),
            "# monitor drill: inert, removed at once",
        ));
    }
    let systemd = Path::new("/etc/systemd/system");
    if systemd.is_dir() {
        targets.push((
            systemd.join(format!("{}.service", ctx.tag)),
            "[Unit]\nDescription=monitor drill (never enabled)",
        ));
    }
    targets.push((
        ssh.join(format!("{}.authorized_keys", ctx.tag)),
        "ssh-ed25519 AAAAmonitordrilldecoy drill",
    ));
    // Each file is made new here (never one that was there, never through
    // a symlink), then the shell writes it, as an intruder's would.
    let mut script = String::new();
    for (path, content) in &targets {
        create_new(path, b"", 0o600)?;
        cleanup.0.push(path.clone());
        script.push_str(&format!(
            "printf '%s\\n' '{content}' >> '{}'; ",
            path.display()
        ));
    }
    sh(&script)?;
    for (path, _) in &targets {
        if !path.exists() {
            return Err(DrillError::Step(format!(
                "the drill could not write {}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Runs a program from memory: `memfd_create`, a copy of `/bin/true`
/// written into it, `execveat` of the descriptor.
fn memfd_exec() -> Result<(), DrillError> {
    let image = std::fs::read("/bin/true").doing("cannot read /bin/true")?;
    // SAFETY: plain syscalls; the child only calls execveat and _exit.
    unsafe {
        let fd = libc::memfd_create(c"drill".as_ptr(), 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).doing("memfd_create");
        }
        let mut file = {
            use std::os::fd::FromRawFd as _;
            std::fs::File::from_raw_fd(fd)
        };
        file.write_all(&image)?;
        let argv = [c"true".as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        match libc::fork() {
            -1 => return Err(std::io::Error::last_os_error()).doing("fork"),
            0 => {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    c"".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
                libc::_exit(127);
            }
            child => {
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
            }
        }
    }
    Ok(())
}

/// Download and execute: fetch a program over HTTP from a local server,
/// write it to a temporary directory, make it executable and run it.
fn download_exec(ctx: &StepContext) -> Result<(), DrillError> {
    let payload = std::fs::read("/bin/echo").doing("cannot read /bin/echo")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        let mut request = [0u8; 512];
        let _ = conn.read(&mut request)?;
        conn.write_all(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                payload.len()
            )
            .as_bytes(),
        )?;
        conn.write_all(&payload)
    });
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /update.bin HTTP/1.0\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    server
        .join()
        .map_err(|_| DrillError::Step("server thread panicked".into()))??;
    let body = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &reply[i + 4..])
        .ok_or_else(|| DrillError::Step("no HTTP body in the reply".into()))?;
    // Hidden, as droppers name their payloads, in a world-writable
    // directory as droppers use (/tmp's mode, 01777), made inside the
    // runner's private 0700 directory: no other user can reach it.
    let drop_dir = ctx.sandbox.join("drop");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&drop_dir)
        .doing(format!("cannot create {}", drop_dir.display()))?;
    let mut cleanup = Cleanup(vec![drop_dir.clone()]);
    std::fs::set_permissions(&drop_dir, std::fs::Permissions::from_mode(0o1777))?;
    let path = drop_dir.join(format!(".{}", ctx.tag));
    create_new(&path, body, 0o700)?;
    cleanup.0.push(path.clone());
    Command::new(&path)
        .arg("monitor drill payload")
        .stdout(Stdio::null())
        .status()?;
    Ok(())
}

/// Privilege-escalation probing: as an unprivileged user, look for setuid
/// programs and try to become root again and again, the way `sudo -l` loops
/// and exploit kits do.
fn privesc_probe() -> Result<(), DrillError> {
    // SAFETY: the child only makes syscalls and execs; the parent waits.
    unsafe {
        match libc::fork() {
            -1 => return Err(std::io::Error::last_os_error()).doing("fork"),
            0 => {
                let nobody = 65534;
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(nobody) != 0
                    || libc::setuid(nobody) != 0
                {
                    libc::_exit(1);
                }
                for _ in 0..5 {
                    libc::setuid(0);
                    libc::setresuid(0, 0, 0);
                    libc::setgid(0);
                }
                let argv = [c"sh".as_ptr(), c"-c".as_ptr(), c"find /usr/bin /usr/sbin /bin -perm -4000 2>/dev/null; for i in 1 2 3; do sudo -n -l 2>/dev/null; done; true".as_ptr(), std::ptr::null()];
                libc::execv(c"/bin/sh".as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
            child => {
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
            }
        }
    }
    Ok(())
}

/// Log tampering: a log file written, truncated and deleted (a new file,
/// not an existing log).
fn log_tamper(ctx: &StepContext) -> Result<(), DrillError> {
    let log = PathBuf::from(format!("/var/log/{}.log", ctx.tag));
    create_new(
        &log,
        b"Nov 27 00:00:00 host sshd[1]: Accepted password for root from 10.0.0.9\n",
        0o600,
    )?;
    let _cleanup = Cleanup(vec![log.clone()]);
    sh(&format!(": > '{0}'; rm -f '{0}'", log.display()))
}

/// A burst of discovery: processes, connections, users, the system.
fn discovery_burst() -> Result<(), DrillError> {
    sh(
        "ps -ef; ss -tanp || netstat -tanp; cat /proc/net/tcp /proc/net/tcp6; id; whoami; uname -a; hostname; ip addr || ifconfig; cat /etc/passwd; w; last -n 5",
    )?;
    // Every process's command line, the way process discovery tools read them.
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let _ = std::fs::read(entry.path().join("cmdline"));
    }
    Ok(())
}

/// Tampering with the agent: a signal and a ptrace seize aimed at it, a BPF
/// program loaded, and a file written into its state directory.
fn agent_tamper(ctx: &StepContext) -> Result<(), DrillError> {
    let pid = ctx
        .agent_pid
        .ok_or_else(|| DrillError::Step("the agent's pid is unknown (no status file)".into()))?
        as i32;
    // SAFETY: SIGCONT to a running process is harmless; a seize does not
    // stop the tracee and is detached at once.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
        if libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) == 0 {
            libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        }
    }
    load_trivial_bpf_program();
    let probe = ctx.state_dir.join(format!(".{}", ctx.tag));
    create_new(
        &probe,
        b"monitor drill: agent state tampering probe\n",
        0o600,
    )?;
    let _cleanup = Cleanup(vec![probe.clone()]);
    Ok(())
}

/// Loads (and closes) a two-instruction socket filter: `r0 = 0; exit`.
fn load_trivial_bpf_program() {
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
    }
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let attr = ProgLoad {
        prog_type: 1, // BPF_PROG_TYPE_SOCKET_FILTER
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
    };
    // SAFETY: BPF_PROG_LOAD (5) with a valid attribute block.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_bpf,
            5,
            &raw const attr,
            std::mem::size_of::<ProgLoad>(),
        );
        if fd >= 0 {
            libc::close(fd as i32);
        }
    }
}
