//! The stop signals the agent obeys (SIGTERM from the service manager,
//! SIGINT from a terminal), and who sent them.
//!
//! A stop from anything else than the service manager or a terminal is how
//! an attacker silences the agent, so the sender matters: the handler is
//! installed with `SA_SIGINFO` and keeps the sender's pid and uid, then
//! wakes the runtime through a pipe (both async-signal-safe).

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
};

use tokio::io::AsyncReadExt as _;

/// The write end of the wake-up pipe, for the handler.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The last signal's sender.
static SENDER_PID: AtomicI32 = AtomicI32::new(0);
static SENDER_UID: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_stop_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // only atomics and write(2) are used here (async-signal-safe).
    unsafe {
        if !info.is_null() {
            SENDER_PID.store((*info).si_pid(), Ordering::Relaxed);
            SENDER_UID.store((*info).si_uid(), Ordering::Relaxed);
        }
        let byte = signal as u8;
        let fd = WAKE.load(Ordering::Relaxed);
        if fd >= 0 {
            libc::write(fd, (&raw const byte).cast(), 1);
        }
    }
}

/// A stop signal and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopSignal {
    /// `SIGTERM` or `SIGINT`.
    pub name: &'static str,
    /// The sender's pid (0: the kernel, e.g. Ctrl-C on a terminal).
    pub sender_pid: i32,
    /// The sender's real uid.
    pub sender_uid: u32,
    /// The sender's executable, if it could be read.
    pub sender_exe: Option<String>,
}

impl StopSignal {
    /// Whether the stop came from the service manager (pid 1) or a terminal
    /// (the kernel), as an operator's stop does; anything else is reported.
    pub fn is_expected(&self) -> bool {
        self.sender_pid <= 1
    }

    /// One line for logs and records.
    pub fn describe(&self) -> String {
        match self.sender_pid {
            0 => format!("{} from the terminal", self.name),
            1 => format!("{} from the service manager", self.name),
            pid => format!(
                "{} from pid {pid} ({}, uid {})",
                self.name,
                self.sender_exe.as_deref().unwrap_or("exe unknown"),
                self.sender_uid
            ),
        }
    }
}

/// SIGINT and SIGTERM handlers, installed when created: install them before
/// slow start-up work so a signal during start-up still stops cleanly.
pub struct ShutdownSignals {
    wake: tokio::net::unix::pipe::Receiver,
}

impl ShutdownSignals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn install() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned here; the write end
        // stays open for the life of the process (the handler uses it).
        let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let previous = WAKE.swap(fds[1], Ordering::AcqRel);
        if previous >= 0 {
            // SAFETY: the write end of an earlier install, no longer used.
            unsafe { libc::close(previous) };
        }
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: a zeroed sigaction with an SA_SIGINFO handler that
            // only touches atomics and write(2).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_stop_signal as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(Self {
            wake: tokio::net::unix::pipe::Receiver::from_owned_fd(read)?,
        })
    }

    /// Waits for either signal; returns it with its sender.
    pub async fn recv(&mut self) -> StopSignal {
        let mut byte = [0u8; 1];
        let signal = loop {
            match self.wake.read(&mut byte).await {
                Ok(1) => break i32::from(byte[0]),
                // Only this process writes, and never closes the write end.
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let sender_pid = SENDER_PID.load(Ordering::Relaxed);
        StopSignal {
            name: if signal == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            },
            sender_pid,
            sender_uid: SENDER_UID.load(Ordering::Relaxed),
            sender_exe: (sender_pid > 0)
                .then(|| std::fs::read_link(format!("/proc/{sender_pid}/exe")).ok())
                .flatten()
                .map(|p| p.display().to_string()),
        }
    }
}
