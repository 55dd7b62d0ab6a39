//! The runner's ways out before a session starts — a port in use, a directory that cannot be
//! made, a job it must refuse — leave nothing behind and say why in one line. These runs fail
//! before any browser is launched, so no Chromium and no PID namespace are needed.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use leakwarden_tests::runner::{job_file, run_with_deadline, test_dir};
use leakwarden_tests::{bin, describe};

/// `leakwarden-runner run --run-dir <root> ARGS…`, with a stand-in for Chromium: nothing here
/// gets as far as launching it.
fn runner(root: &Path, args: &[&str]) -> (Command, Output) {
    let mut cmd = Command::new(bin("leakwarden-runner"));
    cmd.arg("run")
        .arg("--run-dir")
        .arg(root)
        .args(["--chromium", "/bin/true"])
        .args(args)
        .env("TMPDIR", root);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(60));
    (cmd, out)
}

fn run_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("leakwarden-run-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A port held by this test for as long as the listener lives.
fn busy_port() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

/// `--listen` on a port in use, the embedded site's port in use, an artifacts directory that
/// cannot be created: each exits 1 naming the cause, and the run directory it had already
/// created is gone. Before the fix each left `leakwarden-run-<pid>-<start>/` behind (the
/// run directory had no `Drop`; the next start's clean-up was the only way it went).
// See: issue 14, item 7.
#[test]
fn runner_early_errors_leave_no_run_directory() {
    let dir = test_dir();
    let root = dir.path();
    let (_held, port) = busy_port();
    let listen = format!("127.0.0.1:{port}");
    let not_a_dir = root.join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let artifacts = not_a_dir.join("artifacts");
    let port_arg = port.to_string();
    let cases: [(&str, Vec<&str>, &str); 3] = [
        ("--listen in use", vec!["--listen", &listen], "--listen"),
        (
            "site port in use",
            vec!["--site-port", &port_arg],
            "starting the embedded site",
        ),
        (
            "artifacts directory cannot be made",
            vec!["--artifacts", artifacts.to_str().expect("utf-8 path")],
            "creating",
        ),
    ];
    for (what, args, names) in cases {
        let (cmd, out) = runner(root, &args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: {}",
            describe(&cmd, &out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{what}: {}", describe(&cmd, &out));
        let left = run_dirs(root);
        assert!(
            left.is_empty(),
            "{what}: run directory left behind: {left:?}\n{}",
            describe(&cmd, &out)
        );
    }
}

/// A duration too large for any clock is a located job error (exit 64, one line
/// `FILE:LINE:COLUMN: message`), not a panic. Before the fix `…h` overflowed while parsing
/// (a panic in a debug build) and `18446744073709551615s` parsed, then panicked when the
/// session's deadline was computed (`Instant + Duration` overflow): exit 101 either way.
// See: issue 14, item 11.
#[test]
fn runner_huge_duration_in_a_job_exits_64_with_location() {
    let dir = test_dir();
    let root = dir.path();
    let cases = [
        (
            "timeout.yaml",
            "sessions: 1\ntimeouts:\n  session: 18446744073709551615s\nsteps:\n  - navigate: /\n",
            3,
        ),
        (
            "sleep.yaml",
            "sessions: 1\nsteps:\n  - navigate: /\n  - sleep: 99999999999999999h\n",
            4,
        ),
    ];
    for (name, yaml, line) in cases {
        let job = job_file(root, name, yaml);
        let job_arg = job.to_str().expect("utf-8 path");
        let (cmd, out) = runner(root, &[job_arg]);
        assert_eq!(out.status.code(), Some(64), "{}", describe(&cmd, &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{}", describe(&cmd, &out));
        assert!(
            err.contains(&format!("{}:{line}:", job.display())) && err.contains("longer than"),
            "{}",
            describe(&cmd, &out)
        );
        assert!(run_dirs(root).is_empty(), "{}", describe(&cmd, &out));
    }
    // The same on the command line: clap names the flag, exit 64.
    let (cmd, out) = runner(root, &["--drain-timeout", "99999999999999999h"]);
    assert_eq!(out.status.code(), Some(64), "{}", describe(&cmd, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--drain-timeout"),
        "{}",
        describe(&cmd, &out)
    );
}

/// The guard woken while the runner still holds the lock, the directory then removed by the
/// runner itself (an early exit: the runner's `RunDir` goes as the runner unwinds): the guard
/// finds nothing to do, exits 0 and says nothing. It used to go on to remove the directory
/// itself and fail loudly ("removing …: No such file or directory", exit 1) — after the
/// runner's own exit, on the user's terminal.
#[test]
fn a_guard_that_wakes_before_the_runner_removed_its_directory_says_nothing() {
    use std::io::Read as _;
    use std::process::Stdio;
    let dir = test_dir();
    let run = dir.path().join("leakwarden-run-1-2");
    std::fs::create_dir_all(run.join("b1")).expect("mkdir");
    let lock = std::fs::File::create(run.join(".lock")).expect("lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    let mut guard = Command::new(bin("leakwarden-runner"))
        .arg("guard")
        .arg(&run)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the guard");
    // End of file on its pipe: "the runner is gone" — but its lock is still held.
    drop(guard.stdin.take());
    std::thread::sleep(Duration::from_millis(300));
    // The runner's own removal, then its lock let go (its descriptors close as it exits).
    std::fs::remove_dir_all(&run).expect("remove the run directory");
    drop(lock);
    let mut err = String::new();
    if let Some(mut e) = guard.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = guard.wait().expect("wait for the guard");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "the guard spoke: {err}");
}
