//! Helpers shared by the end-to-end tests under `tests/tests/`: where the real binaries are,
//! how to run a command inside a private PID namespace, bounded polling, and failure messages
//! that show the command, its stdout and stderr.
//!
//! Each area adds its own helpers in its own module file (`runner.rs`, `sidecar.rs`, `stack.rs`)
//! so that work on one area does not touch another's file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a binary built by this workspace (`leakwarden`, `leakwarden-runner`), in the same
/// profile directory as the running test binary (`target/<profile>/deps/<test>` → `target/<profile>/`).
/// `make test` builds the binaries before running the tests; a missing binary is a clear panic.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test binary has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not built; run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// Poll `f` every `every` until it returns `Some`, or panic with `what` after `deadline`.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    every: Duration,
    f: impl FnMut() -> Option<T>,
) -> T {
    try_wait_for(deadline, every, f)
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// [`wait_for`] that returns `None` at the deadline, for a caller whose failure message needs
/// more than the wait's name (the logs of what it waited on).
pub fn try_wait_for<T>(
    deadline: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Format a finished command for an assertion message.
pub fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run a command to completion and return its output; panics with the full description if it
/// could not be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

/// A `Command` that runs `program` inside a fresh private PID namespace with its own /proc
/// (`unshare --pid --fork --mount-proc --kill-child`): inside it, the program sees only its own
/// descendants, and everything in it dies when the namespace's init does. Every test that kills
/// runs its killer this way. Requires root (CI runs as root).
pub fn in_pid_namespace(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
    c.arg(program);
    c
}

/// True when this process may create PID namespaces (root, or CAP_SYS_ADMIN).
pub fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Path of the system Chromium, if installed.
pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}
pub mod incidents;
pub mod kube;
pub mod ops;
pub mod podsecurity;
pub mod proxy;
pub mod runner;
pub mod serve;
pub mod sidecar;
