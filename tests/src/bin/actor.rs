//! A test helper that performs one security-relevant action and exits, so the
//! kernel tests can assert on exactly what it did. (The tests cannot act
//! themselves: the in-process capture treats its own process as the agent,
//! whose actions are never reported.)
//!
//! Usage: `actor ACTION [ARGS...]`; prints a line of facts for the test.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| panic!("missing argument {i}"))
    };
    match args.first().map(String::as_str) {
        Some("as") => {
            // As uid (and gid) ARG1, with no supplementary groups, do the
            // rest of the command line (for hosts without setpriv).
            use std::os::unix::process::CommandExt as _;
            let id: u32 = arg(1).parse().unwrap();
            // SAFETY: plain syscalls.
            unsafe {
                assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups failed");
                assert_eq!(libc::setgid(id), 0, "setgid failed");
                assert_eq!(libc::setuid(id), 0, "setuid failed");
            }
            let err = std::process::Command::new(std::env::current_exe().unwrap())
                .args(&args[2..])
                .exec();
            panic!("exec of the actor failed: {err}");
        }
        Some("connect") => {
            let mut s = TcpStream::connect(("127.0.0.1", arg(1).parse::<u16>().unwrap())).unwrap();
            let _ = s.write_all(b"hi");
        }
        Some("connect6") => {
            let _ = TcpStream::connect(("::1", arg(1).parse::<u16>().unwrap()));
        }
        Some("connect-unix-as") => {
            // As uid ARG1, connect to the unix socket ARG2; say whether refused.
            // SAFETY: plain syscalls.
            unsafe {
                assert_eq!(libc::setgid(arg(1).parse().unwrap()), 0, "setgid failed");
                assert_eq!(libc::setuid(arg(1).parse().unwrap()), 0, "setuid failed");
            }
            match UnixStream::connect(arg(2)) {
                Ok(_) => println!("connected"),
                Err(e) => println!("refused: {e}"),
            }
        }
        Some("exec-each-as") => {
            // As uid ARG1, run every file in directory ARG2 (name order),
            // one after the other; print how many ran.
            // SAFETY: plain syscalls.
            unsafe {
                assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups failed");
                assert_eq!(libc::setgid(arg(1).parse().unwrap()), 0, "setgid failed");
                assert_eq!(libc::setuid(arg(1).parse().unwrap()), 0, "setuid failed");
            }
            let mut files: Vec<_> = std::fs::read_dir(arg(2))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let ran = files
                .iter()
                .filter(|f| {
                    std::process::Command::new(f)
                        .status()
                        .is_ok_and(|s| s.success())
                })
                .count();
            println!("ran {ran} of {}", files.len());
        }
        Some("connect-unix") => {
            let _ = UnixStream::connect(arg(1));
        }
        Some("connect-badaddr") => {
            // SAFETY: connect with an invalid pointer: the kernel answers EFAULT.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let r = libc::connect(fd, 8 as *const libc::sockaddr, 16);
                assert_eq!(r, -1);
            }
        }
        Some("udp") => {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(("127.0.0.1", arg(1).parse::<u16>().unwrap()))
                .unwrap();
        }
        Some("serve") => {
            // bind + listen, print the port, accept one connection.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            println!("{}", l.local_addr().unwrap().port());
            std::io::stdout().flush().unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 2];
            let _ = c.read(&mut buf);
        }
        Some("write") => {
            std::fs::write(arg(1), b"written by actor\n").unwrap();
        }
        Some("read") => {
            let _ = std::fs::read(arg(1));
        }
        Some("read-as") => {
            // Drop to `uid`, then try to open a file it may not read.
            // SAFETY: plain syscall.
            let r = unsafe { libc::setuid(arg(1).parse().unwrap()) };
            assert_eq!(r, 0, "setuid failed");
            let err = std::fs::File::open(arg(2)).expect_err("the open is refused");
            println!("{}", err.raw_os_error().unwrap_or(0));
        }
        Some("unlink") => std::fs::remove_file(arg(1)).unwrap(),
        Some("rename") => std::fs::rename(arg(1), arg(2)).unwrap(),
        Some("unlink-relative") => {
            std::env::set_current_dir(arg(1)).unwrap();
            std::fs::remove_file(arg(2)).unwrap();
        }
        Some("hold-connections") => {
            // As uid ARG1: open ARG3 connections to ARG2 and hold them for
            // ARG4 seconds without sending a byte; print how many opened.
            let uid: u32 = arg(1).parse().unwrap();
            // SAFETY: plain syscalls; the soft limit is raised to the hard one.
            unsafe {
                assert_eq!(libc::setgid(uid), 0, "setgid failed");
                assert_eq!(libc::setuid(uid), 0, "setuid failed");
                let mut l = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
                l.rlim_cur = l.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            }
            let addr: std::net::SocketAddr = arg(2).parse().unwrap();
            let want: usize = arg(3).parse().unwrap();
            let mut held = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while held.len() < want && std::time::Instant::now() < deadline {
                if let Ok(s) =
                    TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
                {
                    held.push(s);
                }
            }
            println!("held {}", held.len());
            std::io::stdout().flush().unwrap();
            std::thread::sleep(std::time::Duration::from_secs(arg(4).parse().unwrap()));
        }
        Some("setuid") => {
            // SAFETY: plain syscalls.
            let r = unsafe { libc::setuid(arg(1).parse().unwrap()) };
            assert_eq!(r, 0, "setuid failed");
        }
        Some("setuid-noop-refused") => {
            // SAFETY: plain syscalls.
            unsafe {
                // Changes nothing: the effective uid it already has.
                assert_eq!(libc::setresuid(u32::MAX, libc::geteuid(), u32::MAX), 0);
                assert_eq!(libc::setuid(arg(1).parse().unwrap()), 0, "setuid failed");
                // Refused: an unprivileged uid cannot go back to root.
                assert_eq!(libc::setuid(0), -1, "setuid(0) was allowed");
            }
        }
        Some("ptrace") => {
            let pid: i32 = arg(1).parse().unwrap();
            // SAFETY: plain syscalls on a test child.
            unsafe {
                assert_eq!(
                    libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0),
                    0,
                    "PTRACE_ATTACH failed"
                );
                let mut status = 0;
                libc::waitpid(pid, &mut status, libc::__WALL);
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
            }
        }
        Some("kill") => {
            // SAFETY: signalling a test child.
            unsafe { libc::kill(arg(1).parse().unwrap(), arg(2).parse().unwrap()) };
        }
        Some("open-flood") => {
            // Write-open files in directory ARG1 as fast as possible for
            // ARG2 seconds; print how many.
            let dir = std::path::PathBuf::from(arg(1));
            let until =
                std::time::Instant::now() + std::time::Duration::from_secs(arg(2).parse().unwrap());
            let mut n = 0u64;
            while std::time::Instant::now() < until {
                for _ in 0..1000 {
                    let _ = std::fs::File::create(dir.join(format!("f{}", n % 64)));
                    n += 1;
                }
            }
            println!("opened {n}");
        }
        Some("syscall") => watched_syscall(&arg(1), args.get(2).map(String::as_str)),
        Some("memfd-exec") => memfd_exec(),
        Some("mmap-exec") => {
            // SAFETY: anonymous mapping, then mprotect of it.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                println!("{:#x}", p as usize);
                let q = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_eq!(
                    libc::mprotect(q, 4096, libc::PROT_READ | libc::PROT_EXEC),
                    0
                );
                println!("{:#x}", q as usize);
            }
        }
        Some("map-exec-file") => {
            // Map file ARG1 executable (as a dynamic loader maps a library).
            map_exec_file(&arg(1));
        }
        Some("drop-and-map") => {
            // Write a copy of /bin/true to ARG1 (mode 0755), then map it
            // executable: a dropped library loaded at once.
            let bytes = std::fs::read("/bin/true").unwrap();
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o755)
                    .open(arg(1))
                    .unwrap();
                f.write_all(&bytes).unwrap();
            }
            map_exec_file(&arg(1));
        }
        Some("io-uring-openat") => {
            // Open file ARG1 ARG2 times through an io_uring ring, never
            // calling open(2); print how many opens completed.
            let n: u32 = arg(2).parse().unwrap();
            println!("opened {}", io_uring_openat(&arg(1), n));
        }
        Some("bpf-load") => bpf_load(),
        Some("bpf-map-update-by-name") => {
            // Find the BPF maps named ARG1 and write key 0 = 0 into each (as
            // `bpf-map-update-by-id`); print their ids.
            for id in bpf_map_ids_named(&arg(1)) {
                bpf_map_update_by_id(id);
                println!("{id}");
            }
        }
        Some("bpf-map-update-by-id") => {
            // Take a handle on BPF map id ARG1 and write key 0 = 0 into it
            // (8-byte key, 1-byte value); with ARG1 "own", on a map of its
            // own made first. Prints the map id.
            let id = match arg(1).as_str() {
                "own" => own_map_id(),
                id => id.parse().unwrap(),
            };
            bpf_map_update_by_id(id);
            println!("{id}");
        }
        Some("finit-module") => {
            let file = std::fs::File::open(arg(1)).unwrap();
            let params = CString::new("actor.params=1").unwrap();
            // SAFETY: finit_module with a valid fd and string; it fails.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_finit_module,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    params.as_ptr(),
                    0,
                )
            };
            assert_eq!(r, -1, "loading /dev/null as a module cannot succeed");
        }
        Some("getppid") => {
            let n: u64 = arg(1).parse().unwrap();
            for _ in 0..n {
                // SAFETY: a plain syscall.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
        }
        Some("alternate") => {
            // getppid and getuid in turn: every call is a new run.
            let n: u64 = arg(1).parse().unwrap();
            for _ in 0..n {
                // SAFETY: plain syscalls.
                unsafe {
                    libc::syscall(libc::SYS_getppid);
                    libc::syscall(libc::SYS_getuid);
                }
            }
        }
        other => panic!("unknown action {other:?}"),
    }
}

/// memfd_create("actor-payload"), copy /bin/true into it, execveat it.
fn memfd_exec() {
    let name = CString::new("actor-payload").unwrap();
    // SAFETY: plain syscalls; the fd is ours.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), 0);
        assert!(fd >= 0, "memfd_create failed");
        let bytes = std::fs::read("/bin/true").unwrap();
        assert_eq!(
            libc::write(fd, bytes.as_ptr().cast(), bytes.len()),
            bytes.len() as isize
        );
        let empty = CString::new("").unwrap();
        let argv0 = CString::new("fileless-true").unwrap();
        let argv = [argv0.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        panic!("execveat failed: {}", std::io::Error::last_os_error());
    }
}

/// Loads the smallest valid socket filter (`r0 = 0; exit`) named "actor_prog".
fn bpf_load() {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        pad: [u8; 32],
        pad2: [u8; 32],
    }
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = Attr {
        prog_type: 1, // socket filter
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..10].copy_from_slice(b"actor_prog");
    // SAFETY: bpf(BPF_PROG_LOAD) with a valid attribute block.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5,
            &raw const attr,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Makes one of the syscalls the security sensor reports as called (issue
/// 20, item 6); `target` is a pid (a test child) or a path, as the call
/// needs. Prints the result.
fn watched_syscall(name: &str, target: Option<&str>) {
    let pid = || -> i32 { target.expect("a target pid").parse().unwrap() };
    let path = || CString::new(target.expect("a target path")).unwrap();
    let mut word = 0u64;
    let local = libc::iovec {
        iov_base: (&raw mut word).cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: (&raw mut word).cast(),
        iov_len: 8,
    };
    // SAFETY: each is one syscall on our own memory, a test child, or a
    // path the test named; failures are results, printed.
    let ret: i64 = unsafe {
        match name {
            "process_vm_readv" => {
                libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) as i64
            }
            "process_vm_writev" => {
                libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) as i64
            }
            "pidfd_getfd" => {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
                libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0)
            }
            "pidfd_send_signal" => {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, pid(), 0);
                libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGTERM, 0, 0)
            }
            "rt_sigqueueinfo" => {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                info.si_signo = libc::SIGTERM;
                info.si_code = -1; // SI_QUEUE
                libc::syscall(
                    libc::SYS_rt_sigqueueinfo,
                    pid(),
                    libc::SIGTERM,
                    &raw mut info,
                )
            }
            "rt_tgsigqueueinfo" => {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                info.si_signo = libc::SIGTERM;
                info.si_code = -1;
                libc::syscall(
                    libc::SYS_rt_tgsigqueueinfo,
                    pid(),
                    pid(),
                    libc::SIGTERM,
                    &raw mut info,
                )
            }
            "unshare" => libc::unshare(libc::CLONE_NEWNS) as i64,
            "mount" => {
                private_mounts();
                let none = CString::new("none").unwrap();
                let tmpfs = CString::new("tmpfs").unwrap();
                libc::mount(
                    none.as_ptr(),
                    path().as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ) as i64
            }
            "umount2" => {
                private_mounts();
                libc::umount2(path().as_ptr(), libc::MNT_DETACH) as i64
            }
            "setns" => {
                let ns = CString::new("/proc/1/ns/mnt").unwrap();
                let fd = libc::open(ns.as_ptr(), libc::O_RDONLY);
                libc::setns(fd, libc::CLONE_NEWNS) as i64
            }
            "pivot_root" => {
                // Refused (the new root is not a mount point): still reported.
                libc::syscall(libc::SYS_pivot_root, path().as_ptr(), path().as_ptr())
            }
            "io_uring_setup" => {
                let mut params = [0u8; 120];
                libc::syscall(libc::SYS_io_uring_setup, 8, params.as_mut_ptr())
            }
            "link" => {
                let from = CString::new(target.unwrap().split_once(' ').unwrap().0).unwrap();
                let to = CString::new(target.unwrap().split_once(' ').unwrap().1).unwrap();
                libc::link(from.as_ptr(), to.as_ptr()) as i64
            }
            "symlink" => {
                let from = CString::new(target.unwrap().split_once(' ').unwrap().0).unwrap();
                let to = CString::new(target.unwrap().split_once(' ').unwrap().1).unwrap();
                libc::symlink(from.as_ptr(), to.as_ptr()) as i64
            }
            other => panic!("unknown syscall {other}"),
        }
    };
    // As the kernel returns it: -errno for a failure.
    let ret = if ret == -1 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        ret
    };
    println!("{name} returned {ret}");
}

/// A mount namespace of our own whose mounts do not propagate back to the
/// host's (as `unshare -m` does).
fn private_mounts() {
    let root = CString::new("/").unwrap();
    // SAFETY: plain syscalls.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private"
        );
    }
}

/// Maps `path` read-only and executable, then unmaps it; prints the address.
fn map_exec_file(path: &str) {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a private read-only mapping of an open file, unmapped at once.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap of {path}");
        println!("{:#x}", p as usize);
        libc::munmap(p, 4096);
    }
}

/// `bpf(cmd, attr)` with a 128-byte attribute block.
fn bpf_call(cmd: i32, attr: &[u8; 128]) -> i64 {
    // SAFETY: bpf(2) with a valid, fully sized attribute block.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), 128u32) }
}

/// Makes a small hash map (8-byte key, 1-byte value) and returns its id.
fn own_map_id() -> u32 {
    let mut attr = [0u8; 128];
    for (i, v) in [1u32, 8, 1, 4].iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes()); // type, key, value, entries
    }
    let fd = bpf_call(0, &attr); // BPF_MAP_CREATE
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // BPF_OBJ_GET_INFO_BY_FD: {bpf_fd, info_len, info}; the id is info's second word.
    let mut info = [0u8; 88];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    assert_eq!(bpf_call(15, &attr), 0, "BPF_OBJ_GET_INFO_BY_FD");
    u32::from_ne_bytes(info[4..8].try_into().unwrap())
}

fn bpf_map_update_by_id(id: u32) {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf_call(14, &attr); // BPF_MAP_GET_FD_BY_ID
    assert!(
        fd >= 0,
        "BPF_MAP_GET_FD_BY_ID {id}: {}",
        std::io::Error::last_os_error()
    );
    let key = 0u64;
    let value = 0u8;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&raw const key as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(&raw const value as u64).to_ne_bytes());
    let ret = bpf_call(2, &attr); // BPF_MAP_UPDATE_ELEM, BPF_ANY
    assert_eq!(
        ret,
        0,
        "BPF_MAP_UPDATE_ELEM: {}",
        std::io::Error::last_os_error()
    );
}

/// Opens `path` `times` times through an io_uring ring (raw syscalls, no
/// liburing), one submission at a time; returns how many succeeded.
fn io_uring_openat(path: &str, times: u32) -> u32 {
    let path = CString::new(path).unwrap();
    // struct io_uring_params: 40 bytes, then sq_off (40) and cq_off (40).
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup(entries, params) with a zeroed 120-byte block.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    assert!(
        ring >= 0,
        "io_uring_setup: {}",
        std::io::Error::last_os_error()
    );
    let ring = ring as i32;
    let sq_entries = params[0];
    let (sq_head, sq_tail, sq_mask, sq_array) = (params[10], params[11], params[12], params[16]);
    let map = |len: usize, offset: i64| {
        // SAFETY: maps the ring's shared memory at the offsets the kernel gave.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring,
                offset,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of the ring");
        p.cast::<u8>()
    };
    let sq = map(sq_array as usize + sq_entries as usize * 4, 0);
    let sqes = map(sq_entries as usize * 64, 0x1000_0000);
    let mut opened = 0;
    for _ in 0..times {
        // SAFETY: the SQE and ring words are inside the mappings above.
        unsafe {
            let sqe = std::slice::from_raw_parts_mut(sqes, 64);
            sqe.fill(0);
            sqe[0] = 18; // IORING_OP_OPENAT
            sqe[4..8].copy_from_slice(&libc::AT_FDCWD.to_ne_bytes());
            sqe[16..24].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
            sqe[28..32].copy_from_slice(&(libc::O_RDONLY as u32).to_ne_bytes());
            let word = |off: u32| &*(sq.add(off as usize).cast::<std::sync::atomic::AtomicU32>());
            let tail = word(sq_tail).load(std::sync::atomic::Ordering::Acquire);
            let mask = word(sq_mask).load(std::sync::atomic::Ordering::Relaxed);
            *sq.add(sq_array as usize + ((tail & mask) as usize) * 4)
                .cast::<u32>() = 0;
            word(sq_tail).store(tail.wrapping_add(1), std::sync::atomic::Ordering::Release);
            let _ = sq_head;
            // io_uring_enter(fd, to_submit 1, min_complete 1, GETEVENTS)
            let ret = libc::syscall(
                libc::SYS_io_uring_enter,
                ring,
                1u32,
                1u32,
                1u32,
                std::ptr::null::<u8>(),
                0usize,
            );
            if ret == 1 {
                opened += 1;
            }
        }
    }
    opened
}

/// Ids of the loaded BPF maps whose name is `name`.
fn bpf_map_ids_named(name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        if bpf_call(12, &attr) != 0 {
            return found; // BPF_MAP_GET_NEXT_ID: no more
        }
        id = u32::from_ne_bytes(attr[4..8].try_into().unwrap());
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf_call(14, &attr);
        if fd < 0 {
            continue; // gone meanwhile
        }
        let mut info = [0u8; 88];
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        let ok = bpf_call(15, &attr) == 0;
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd as i32) };
        // struct bpf_map_info: name[16] at offset 24.
        let map_name = info[24..40].split(|&b| b == 0).next().unwrap_or_default();
        if ok && map_name == name.as_bytes() {
            found.push(id);
        }
    }
}
