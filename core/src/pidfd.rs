//! Naming a process safely: a pidfd opened *before* checking the process's start time names that
//! one process for as long as the descriptor lives, whatever happens to its PID. Signals go
//! through the pidfd (`pidfd_send_signal`), exits are awaited on it (it becomes readable when the
//! process exits), and after SIGKILL `process_mrelease` frees a large victim's memory at once.
//!
//! Nothing here calls `kill(2)` with a PID or a process group: no `kill(0, …)`, no `kill(-1, …)`.
//! The few unsafe calls live in [`sys`], each with its reason.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;

use crate::proc::{ProcFs, ReadError};

/// A process as judged: its PID and its start time (clock ticks after boot, field 22 of
/// `/proc/PID/stat`). Together they name one process for the life of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub pid: i32,
    pub start_ticks: u64,
}

/// Why a pidfd was not opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// PID ≤ 1: never a target (`kill(0)` is our own group, `kill(-1)` everyone, 1 the init).
    #[error("PID {0} is never signalled")]
    Refused(i32),
    #[error("already gone")]
    Gone,
    /// The PID now names another process (a different start time).
    #[error("PID reused by another process")]
    Reused,
    #[error("{0}")]
    Failed(String),
}

/// Open a pidfd on `id` and check, *after* opening it, that the process behind the PID still has
/// the judged start time: if it does, the pidfd names the judged process (a PID is only reused
/// once its old owner has been reaped, and a pidfd outlives neither).
pub fn open_checked(procfs: &ProcFs, id: Identity) -> Result<OwnedFd, OpenError> {
    if id.pid <= 1 {
        return Err(OpenError::Refused(id.pid));
    }
    let pid = Pid::from_raw(id.pid).ok_or(OpenError::Refused(id.pid))?;
    let fd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(Errno::SRCH) => return Err(OpenError::Gone),
        Err(e) => return Err(OpenError::Failed(format!("pidfd_open: {e}"))),
    };
    match procfs.start_ticks(id.pid) {
        Ok(Some(t)) if t == id.start_ticks => Ok(fd),
        Ok(Some(_)) => Err(OpenError::Reused),
        Ok(None) => Err(OpenError::Gone),
        Err(ReadError::Gone) => Err(OpenError::Gone),
        Err(e) => Err(OpenError::Failed(format!(
            "re-reading {}/{}/stat: {e}",
            procfs.root().display(),
            id.pid
        ))),
    }
}

/// Send `sig` through a pidfd. `Err(Errno::SRCH)` when the process already exited.
pub fn send(fd: &OwnedFd, sig: Signal) -> Result<(), Errno> {
    pidfd_send_signal(fd.as_fd(), sig)
}

/// Register a pidfd with tokio's reactor: it becomes readable when the process exits.
pub fn async_pidfd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    sys::register(fd)
}

/// Wait until the process behind `fd` has exited (a zombie counts as exited), at most
/// `timeout`. Returns whether it exited.
pub async fn wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    if exited_now(fd) {
        return true;
    }
    let Ok(dup) = fd.try_clone() else {
        return false;
    };
    let Ok(afd) = async_pidfd(dup) else {
        return false;
    };
    tokio::time::timeout(timeout, afd.readable()).await.is_ok()
}

/// Whether the process behind `fd` has exited, without waiting.
pub fn exited_now(fd: &OwnedFd) -> bool {
    rustix::event::poll(
        &mut [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)],
        Some(&rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    )
    .is_ok_and(|n| n > 0)
}

/// Ask the kernel to reap a SIGKILLed process's memory now rather than when it finishes
/// exiting. Best effort: older kernels (< 5.15) answer ENOSYS, a process already gone ESRCH.
pub fn mrelease(fd: &OwnedFd) {
    sys::process_mrelease(fd);
}

/// The unsafe calls, each with its reason.
#[allow(unsafe_code)]
mod sys {
    use std::os::fd::{AsRawFd, OwnedFd};

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
        // names the same pidfd until the AsyncFd is dropped, and OwnedFd::as_raw_fd always
        // returns that descriptor — what register_with_interest requires.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into())
    }

    pub fn process_mrelease(pidfd: &OwnedFd) {
        // SAFETY: process_mrelease takes an fd and a flags word (must be 0); no memory is passed
        // and the descriptor stays owned by the caller.
        let _ = unsafe { libc::syscall(libc::SYS_process_mrelease, pidfd.as_raw_fd(), 0u32) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_sleep() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep")
    }

    fn id_of(c: &std::process::Child) -> Identity {
        let pid = c.id() as i32;
        let start_ticks = ProcFs::default()
            .start_ticks(pid)
            .expect("stat")
            .expect("alive");
        Identity { pid, start_ticks }
    }

    #[test]
    fn pid_0_1_and_negative_are_refused_before_any_syscall() {
        let fs = ProcFs::default();
        for pid in [-1, 0, 1] {
            assert_eq!(
                open_checked(
                    &fs,
                    Identity {
                        pid,
                        start_ticks: 0
                    }
                )
                .err(),
                Some(OpenError::Refused(pid))
            );
        }
    }

    #[tokio::test]
    async fn a_reused_pid_is_not_opened_and_a_live_one_is_signalled_and_awaited() {
        let fs = ProcFs::default();
        let mut c = spawn_sleep();
        let id = id_of(&c);
        let reused = Identity {
            start_ticks: id.start_ticks + 1,
            ..id
        };
        assert_eq!(open_checked(&fs, reused).err(), Some(OpenError::Reused));
        let fd = open_checked(&fs, id).expect("open");
        assert!(!exited_now(&fd));
        assert!(!wait_exit(&fd, Duration::from_millis(50)).await);
        send(&fd, Signal::KILL).expect("signal");
        assert!(wait_exit(&fd, Duration::from_secs(5)).await);
        mrelease(&fd);
        let _ = c.wait();
        assert_eq!(send(&fd, Signal::TERM), Err(Errno::SRCH));
        assert_eq!(open_checked(&fs, id).err(), Some(OpenError::Gone));
    }
}
