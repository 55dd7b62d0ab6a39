//! One long-lived thread that spawns every browser.
//!
//! `PR_SET_PDEATHSIG` is delivered when the thread that forked the child exits, not when the
//! process does. Tokio's blocking pool retires idle threads, so a browser spawned from there
//! would be SIGKILLed at a random moment. Spawning from one dedicated thread that lives until
//! the runner has closed every browser gives the parent-death signal the meaning we want:
//! "the runner is gone".
//!
//! The launcher also keeps the set of pids the runner waits for itself (through pidfds), so
//! the reaper (`reaper.rs`) never reaps one of them; spawn and registration happen under the
//! same lock the reaper takes.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// How the child is to be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Own process group, parent-death signal, waited for through its pidfd.
    Owned,
    /// New session, no parent-death signal, not waited for (the `abandon` fault).
    Detached,
}

/// A spawned child: its pid, and for owned children a pidfd opened before anyone could reap it.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
}

enum Request {
    Spawn {
        cmd: Box<Command>,
        mode: Mode,
        pipes: Option<(i32, i32)>,
        reply: oneshot::Sender<io::Result<Spawned>>,
    },
    Stop,
}

/// Pids the runner waits for itself; the reaper skips them.
#[derive(Debug, Default, Clone)]
pub struct Owned(Arc<Mutex<HashSet<i32>>>);

impl Owned {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        // A poisoned lock only means a thread panicked while holding it; the set is still valid.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn release(&self, pid: i32) {
        self.lock().remove(&pid);
    }
}

/// Handle to the launcher thread. Dropping every clone of the sender and calling
/// [`Launcher::join`] ends the thread — only after all browsers are gone.
pub struct Launcher {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    owned: Owned,
}

#[derive(Clone)]
pub struct LaunchHandle {
    tx: mpsc::Sender<Request>,
}

impl Launcher {
    pub fn start(owned: Owned) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread_owned = owned.clone();
        let thread = std::thread::Builder::new()
            .name("browser-launcher".into())
            .spawn(move || {
                for req in rx {
                    match req {
                        Request::Spawn {
                            cmd,
                            mode,
                            pipes,
                            reply,
                        } => {
                            let _ = reply.send(spawn(*cmd, mode, pipes, &thread_owned));
                        }
                        Request::Stop => break,
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            owned,
        })
    }

    pub fn handle(&self) -> Option<LaunchHandle> {
        self.tx.clone().map(|tx| LaunchHandle { tx })
    }

    pub fn owned(&self) -> &Owned {
        &self.owned
    }

    /// Ends the thread. Call only after every browser has exited: the thread's exit is what
    /// fires their parent-death signal. Later spawns through a handle fail.
    pub fn join(self) {
        // Dropping does it (see the `Drop` impl).
        drop(self);
    }
}

/// An early error or a panic drops the launcher without [`Launcher::join`]: the thread is
/// ended all the same (with no browser started yet there is nothing its exit could kill; with
/// browsers, the parent-death signal is exactly what a runner going away should do to them).
impl Drop for Launcher {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Request::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LaunchHandle {
    pub async fn spawn(&self, cmd: Command, mode: Mode) -> io::Result<Spawned> {
        self.spawn_inner(cmd, mode, None).await
    }

    /// Spawn an owned child that gets `pipes` (its read end, its write end) as fds 3 and 4, the
    /// CDP pipe pair of `--remote-debugging-pipe`. The caller keeps both descriptors open until
    /// this returns and closes its copies afterwards.
    pub async fn spawn_with_pipes(
        &self,
        cmd: Command,
        pipes: (std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>),
    ) -> io::Result<Spawned> {
        use std::os::fd::AsRawFd;
        let raw = (pipes.0.as_raw_fd(), pipes.1.as_raw_fd());
        self.spawn_inner(cmd, Mode::Owned, Some(raw)).await
    }

    async fn spawn_inner(
        &self,
        cmd: Command,
        mode: Mode,
        pipes: Option<(i32, i32)>,
    ) -> io::Result<Spawned> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Spawn {
                cmd: Box::new(cmd),
                mode,
                pipes,
                reply,
            })
            .map_err(|_| io::Error::other("launcher thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("launcher thread dropped the request"))?
    }
}

fn spawn(
    mut cmd: Command,
    mode: Mode,
    pipes: Option<(i32, i32)>,
    owned: &Owned,
) -> io::Result<Spawned> {
    match mode {
        Mode::Owned => {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            crate::sys::tie_to_parent(&mut cmd);
            // After tie_to_parent: its close-on-exec sweep must not catch fds 3 and 4.
            if let Some((r, w)) = pipes {
                crate::sys::pass_pipes(&mut cmd, r, w);
            }
            // Hold the lock across spawn + registration: the reaper cannot see this child
            // as an unowned zombie in between.
            let mut set = owned.lock();
            let child = cmd.spawn()?;
            let pid = child.id() as i32;
            // The child cannot be reaped before we register it (nobody else waits for it), so
            // its pid cannot have been reused: the pidfd refers to it.
            let pidfd = rustix::process::Pid::from_raw(pid)
                .ok_or_else(|| io::Error::other("spawned child has pid 0"))
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                        .map_err(io::Error::from)
                });
            match pidfd {
                Ok(fd) => {
                    set.insert(pid);
                    // `Child` is dropped without waiting: the runner waits through the pidfd.
                    drop(child);
                    Ok(Spawned {
                        pid,
                        pidfd: Some(fd),
                    })
                }
                Err(e) => {
                    drop(set);
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(e)
                }
            }
        }
        Mode::Detached => {
            let (pid_read, pid_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            crate::sys::detach(&mut cmd, std::os::fd::AsRawFd::as_raw_fd(&pid_write));
            let spawned = cmd.spawn();
            // Ours closed, the intermediate's gone with it, the browser's at its exec: a read
            // below ends at end of file at the latest.
            drop(pid_write);
            let mut child = spawned?;
            // That was the intermediate of the double fork; it has exited. Reap it (the reaper
            // thread may have been first: then this finds nothing, which is fine).
            let _ = child.wait();
            let mut buf = [0u8; 4];
            let pid = match rustix::io::read(&pid_read, &mut buf) {
                Ok(4) => i32::from_ne_bytes(buf),
                other => {
                    tracing::warn!(result = ?other, intermediate = child.id(), "the detached browser's pid did not arrive; reporting the intermediate's");
                    child.id() as i32
                }
            };
            Ok(Spawned { pid, pidfd: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A detached child (the `abandon` fault) is reported by its own pid, not by the pid of the
    /// intermediate of the double fork, which exits at once. Before the fix the pid reported
    /// (and logged) was the intermediate's, already gone.
    // See: issue 14, item 11.
    #[test]
    fn a_detached_child_is_reported_by_its_own_pid() {
        let marker = format!("lw-detach-test-{}", std::process::id());
        let mut cmd = Command::new("sleep");
        cmd.arg0(&marker).arg("20");
        let spawned = spawn(cmd, Mode::Detached, None, &Owned::default()).expect("spawn");
        // The pidfd first: the command line read after it belongs to the process it holds.
        let pidfd = rustix::process::Pid::from_raw(spawned.pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", spawned.pid)).unwrap_or_default();
        let is_it = cmdline.starts_with(marker.as_bytes());
        // Ours, identified by the marker and held by a pidfd: end it before asserting.
        if let (true, Some(fd)) = (is_it, pidfd.as_ref()) {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
        assert!(
            is_it,
            "pid {} is not the detached child (cmdline {:?})",
            spawned.pid,
            String::from_utf8_lossy(&cmdline)
        );
        assert!(pidfd.is_some());
    }
}
