//! Issue 15: text logs carry colour only on a terminal, and never with `NO_COLOR` set — logs
//! redirected to a file or read by journald must hold no escape codes.

use std::process::Command;

use leakwarden_tests::{bin, describe, run};

/// The first seconds of `leakwarden watch` (dry-run, nothing to do), its stderr as bytes; run
/// through `script` (a pseudo-terminal) when `tty`.
fn watch_log(tty: bool, no_color: bool) -> Vec<u8> {
    let d = tempfile::tempdir().expect("tempdir");
    let pol = d.path().join("p.yaml");
    std::fs::write(
        &pol,
        format!(
            "dry_run: true\nstale_profiles:\n  roots: ['{}']\n",
            d.path().display()
        ),
    )
    .expect("write");
    let cmd = format!(
        "timeout -s KILL 2 {} watch --dry-run --listen 127.0.0.1:0 --policy {} --interval 1s",
        bin("leakwarden").display(),
        pol.display()
    );
    let mut c = if tty {
        let mut c = Command::new("script");
        c.args(["-qefc", &format!("{cmd} 1>&2"), "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &cmd]);
        c
    };
    c.env_remove("NO_COLOR");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    let out = run(&mut c);
    let mut all = out.stderr.clone();
    all.extend_from_slice(&out.stdout);
    assert!(
        String::from_utf8_lossy(&all).contains("leakwarden watching"),
        "{}",
        describe(&c, &out)
    );
    all
}

fn has_escape(b: &[u8]) -> bool {
    b.contains(&0x1b)
}

#[test]
fn logs_are_plain_text_unless_on_a_terminal_without_no_color() {
    assert!(
        !has_escape(&watch_log(false, false)),
        "escape codes in a redirected log"
    );
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIP: `script` (util-linux) not installed: the terminal case is not checked");
        return;
    }
    assert!(
        has_escape(&watch_log(true, false)),
        "no colour on a terminal"
    );
    assert!(
        !has_escape(&watch_log(true, true)),
        "colour on a terminal despite NO_COLOR"
    );
}

/// `Type=notify` with `WatchdogSec=`: the sidecar tells systemd it is ready after its first scan,
/// pings the watchdog while scans complete, and says it is stopping on SIGTERM.
#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let d = tempfile::tempdir().expect("tempdir");
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let pol = d.path().join("p.yaml");
    std::fs::write(
        &pol,
        format!(
            "dry_run: true\nstale_profiles:\n  roots: ['{}']\n",
            d.path().display()
        ),
    )
    .expect("write");
    let mut child = Command::new(bin("leakwarden"))
        .args([
            "watch",
            "--dry-run",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "300ms",
            "--policy",
        ])
        .arg(&pol)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("watch");
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3 {
            break;
        }
    }
    // SIGTERM through a pidfd on our own (unreaped) child.
    let fd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd");
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::TERM).expect("SIGTERM");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if got.last().is_some_and(|m| m.contains("STOPPING=1")) {
                break;
            }
        }
    }
    let _ = child.wait();
    assert!(
        got.first().is_some_and(|m| m.contains("READY=1")),
        "{got:?}"
    );
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
}
