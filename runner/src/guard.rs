//! The run directory's guard: a small process the runner (`run` or `serve`) starts beside itself,
//! so that a SIGKILLed runner leaves no directory behind either.
//!
//! A SIGKILLed runner takes its browsers along (parent-death signal, end of file on their CDP
//! pipes), but no process of its own is left to remove `<run dir>`; without the guard it would
//! wait for the next start over the same root (or the sidecar). The guard (`leakwarden-runner
//! guard DIR`, process name `lw-run-guard`, its own process group) blocks reading a pipe whose
//! only writer is the runner. End of file means the runner is gone, however it went. Then, if the
//! directory still exists and its lock (`.lock`, held by the runner for its whole life) is free, the guard
//! waits for the processes naming the directory to exit (they are being killed by their
//! parent-death signal; crashpad handlers follow within seconds), terminates those still there
//! after [`GRACE`] through pidfds, removes the directory, and exits. After a normal exit the
//! runner has removed the directory itself, and the guard just exits. If the guard itself is
//! killed too (a kill of the whole cgroup), the next start over the same root removes the
//! directory, as before the guard existed.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use rustix::pipe::PipeFlags;

use crate::proc::Procfs;

/// How long processes naming the directory get to exit by themselves.
const GRACE: Duration = Duration::from_secs(5);

/// How long the runner's lock may stay held after the end of file on the guard's pipe.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// How long a runner that ends normally waits for its guard to exit.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The runner's end: while it is open, the guard waits. Dropped (an early error, a panic), it
/// lets the guard go without waiting for it; [`Guard::finish`] is the normal end.
pub struct Guard {
    writer: Option<OwnedFd>,
    child: Option<std::process::Child>,
}

impl Guard {
    /// The runner's normal end, its directory removed: close our end of the pipe and wait (at
    /// most [`FINISH_WAIT`]) for the guard to see it, find nothing to do, and exit — so that
    /// nothing of the run outlives the runner, the guard included.
    pub async fn finish(mut self) {
        drop(self.writer.take());
        let Some(mut child) = self.child.take() else {
            return;
        };
        let t = Instant::now();
        loop {
            match child.try_wait() {
                Ok(None) if t.elapsed() < FINISH_WAIT => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(None) => {
                    tracing::warn!(
                        pid = child.id(),
                        "the run-directory guard has not exited; leaving it"
                    );
                    return;
                }
                Ok(Some(_)) | Err(_) => return,
            }
        }
    }
}

/// [`spawn`], or `None` with a warning: without a guard a SIGKILLed runner leaves its directory
/// to the next start over the same root (or the sidecar).
pub fn spawn_or_warn(run_dir: &Path) -> Option<Guard> {
    match spawn(run_dir) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "no run-directory guard: a SIGKILLed runner would leave its directory to the next start");
            None
        }
    }
}

/// Start the guard of `run_dir`.
pub fn spawn(run_dir: &Path) -> std::io::Result<Guard> {
    use std::os::unix::process::CommandExt;
    let (reader, writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    // The directory without a trailing `/`: every "which processes name `<run dir>/`" scan
    // (cleanup verification, the final sweep) must not take the guard for a browser.
    cmd.arg("guard")
        .arg(run_dir)
        .stdin(Stdio::from(reader))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group: a signal to the runner's group does not take the guard along.
        .process_group(0)
        .current_dir("/");
    // Waited for only at the runner's normal end (`finish`): it outlives a killed runner on
    // purpose.
    let child = cmd.spawn()?;
    Ok(Guard {
        writer: Some(writer),
        child: Some(child),
    })
}

/// The `guard` subcommand. Returns the exit code.
pub fn run(dir: PathBuf) -> u8 {
    let _ = rustix::thread::set_name(c"lw-run-guard");
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !dir.exists() {
        return 0;
    }
    // The runner holds the lock for its whole life: if it is still held, the runner is not
    // gone (or another holds the directory); leave it. A dying process closes its descriptors
    // one after another, so the end of file on our pipe can come a moment before the lock is
    // let go: wait for it a little before taking "held" for "alive" (a fresh clone's `make
    // test` once saw the guard leave the directory of a SIGKILLed runner this way).
    match std::fs::File::open(dir.join(".lock")) {
        Ok(f) => {
            let t = Instant::now();
            while flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
                if t.elapsed() >= LOCK_WAIT {
                    return 0;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return 0,
        Err(_) => {}
    }
    // The runner removed it while we waited for its lock (an early exit lets the guard go
    // before the directory): nothing to do.
    if !dir.exists() {
        return 0;
    }
    let procfs = Procfs::default();
    let mut needle = dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // A scan that could not read all of /proc proves nothing: keep waiting, and in the end
    // leave the directory to the next start or the sidecar rather than remove it under a
    // process that may still use it.
    let alive = || -> (Vec<crate::proc::Stat>, Option<crate::proc::ScanError>) {
        let scan = procfs.find(None, &needle, me);
        let left = scan.found.into_iter().filter(|s| s.state != 'Z').collect();
        (left, scan.unverified)
    };
    let t = Instant::now();
    let (mut left, mut unverified) = alive();
    while (!left.is_empty() || unverified.is_some()) && t.elapsed() < GRACE {
        std::thread::sleep(Duration::from_millis(50));
        (left, unverified) = alive();
    }
    if !left.is_empty() {
        eprintln!(
            "lw-run-guard: {} process(es) still name {} {:?} after the runner died; terminating",
            left.len(),
            dir.display(),
            GRACE
        );
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(crate::kill::terminate(
                &procfs,
                &left,
                Duration::from_millis(1500),
                Duration::from_secs(2),
            ));
        }
    }
    if let Some(e) = unverified {
        eprintln!(
            "lw-run-guard: cannot verify that no process still names {} ({e}); leaving it to the next start or the sidecar",
            dir.display()
        );
        return 1;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {
            eprintln!(
                "lw-run-guard: the runner is gone; removed {} after {:.1} s",
                dir.display(),
                t.elapsed().as_secs_f64()
            );
            0
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            eprintln!("lw-run-guard: removing {}: {e}", dir.display());
            1
        }
    }
}
