//! The runner's only unsafe code: what a browser's child process does between `fork` and `exec`.
//!
//! `Command::pre_exec` is unsafe because the closure runs in a forked copy of a multi-threaded
//! process, where only async-signal-safe operations are allowed. The closures here make raw
//! system calls only (prctl, getppid, setsid, close_range, fcntl, dup2): no allocation, no locks.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{Pid, Signal};

/// Tie the child to the runner: SIGKILL when the spawning thread exits (`PR_SET_PDEATHSIG`),
/// and fail the exec if the runner already died between `fork` and the `prctl` (the race the
/// man page warns about). Inherited descriptors above stderr are marked close-on-exec.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, so the caller must spawn from a
/// thread that lives as long as the runner (see `launcher.rs`).
pub fn tie_to_parent(cmd: &mut Command) {
    tie_to(cmd, rustix::process::getpid());
}

/// [`tie_to_parent`] with the expected parent given (a test passes one that is not).
fn tie_to(cmd: &mut Command, parent: Pid) {
    // SAFETY: the closure only issues async-signal-safe system calls (prctl, getppid,
    // close_range) and allocates nothing: its errors are bare errno values
    // (`io::Error::from_raw_os_error` and rustix's `Errno` convert without allocating);
    // `parent` is a plain integer copied in.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                // The parent already died: "no such process" is what spawn reports.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            cloexec_inherited();
            Ok(())
        });
    }
}

/// Hand the child a CDP pipe pair as Chromium's `--remote-debugging-pipe` expects it: the
/// browser reads commands from fd 3 and writes replies and events to fd 4. `read` and `write` are
/// the child's ends (close-on-exec in the parent). Register after [`tie_to_parent`]: its closure
/// marks every descriptor above stderr close-on-exec, and this one must come later to clear the
/// flag on 3 and 4 (`dup2` does). The ends are first copied above 10 (close-on-exec, so the copies
/// vanish at exec), so that an end that already is fd 3 or 4 is not overwritten before it is
/// moved.
pub fn pass_pipes(cmd: &mut Command, read: i32, write: i32) {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) and dup2 are async-signal-safe system calls; the closure
    // allocates nothing and captures two integers.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::fcntl(read, libc::F_DUPFD_CLOEXEC, 10);
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            let w = libc::fcntl(write, libc::F_DUPFD_CLOEXEC, 10);
            if w < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The `abandon` fault: the browser is double-forked — the intermediate exits at once, so the
/// browser is reparented to init (a run with `abandon` does not make the runner a subreaper) and
/// is a real orphan from its first second, the way a buggy bot's detached browser ends up — in a
/// new session (no process group the runner could signal) and without a parent-death signal.
///
/// The intermediate writes the browser's pid (native-endian `i32`) to `pid_pipe` before it
/// exits: std only ever learns the intermediate's pid, and that is not the process a log line
/// or the sidecar should be pointed at. `pid_pipe` must be close-on-exec.
pub fn detach(cmd: &mut Command, pid_pipe: i32) {
    // SAFETY: fork, write, _exit, setsid and close_range are async-signal-safe system calls;
    // nothing is allocated (the pid is written from a stack array). The intermediate exits
    // without running any Rust code; std's exec-error pipe is close-on-exec, so the parent still
    // learns whether the grandchild's exec succeeded.
    unsafe {
        cmd.pre_exec(move || {
            match libc::fork() {
                -1 => return Err(io::Error::last_os_error()),
                0 => {}
                browser => {
                    let bytes = browser.to_ne_bytes();
                    // A pipe write this small is atomic; should it fail, the parent falls back
                    // to the intermediate's pid.
                    libc::write(pid_pipe, bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0)
                }
            }
            rustix::process::setsid()?;
            cloexec_inherited();
            Ok(())
        });
    }
}

/// Mark every descriptor above stderr close-on-exec, so descriptors the runner inherited without
/// `O_CLOEXEC` (from a shell or a test harness) do not leak into the browser. Marking instead of
/// closing keeps std's own error-reporting pipe working. Best effort: on kernels before 5.11 the
/// call fails and nothing changes.
fn cloexec_inherited() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the runner is gone before the browser starts, spawn fails with ESRCH ("No such
    /// process"), built without allocating after fork. Before the fix the closure allocated an
    /// `io::Error::other`, which std reports as EINVAL ("Invalid argument").
    // See: issue 14, item 6.
    #[test]
    fn a_child_whose_parent_is_gone_fails_with_esrch() {
        let mut cmd = Command::new("/bin/true");
        // Any pid but ours stands for "the runner that spawned this has died".
        let not_my_parent = Pid::from_raw(i32::MAX).expect("a pid");
        tie_to(&mut cmd, not_my_parent);
        let err = cmd.spawn().expect_err("the pre_exec check refuses");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");

        let mut ok = Command::new("/bin/true");
        tie_to_parent(&mut ok);
        let status = ok.spawn().expect("spawn").wait().expect("wait");
        assert!(status.success());
    }
}
