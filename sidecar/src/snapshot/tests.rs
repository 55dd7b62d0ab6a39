use super::*;
use crate::policy;

#[test]
fn scans_this_machine_and_finds_itself() {
    let mut s = Scanner::new(ProcFs::new("/proc"));
    let snap = s.scan(&policy::builtin()).expect("scan");
    let me = snap
        .get(std::process::id() as i32)
        .expect("self in snapshot");
    assert!(me.fds.unwrap_or(0) >= 3);
    assert!(me.threads >= 1);
    assert!(me.rss_bytes > 0);
    assert!(me.info.is_none(), "the test binary is not a browser");
    // A second scan keeps the cache bounded by live processes.
    let snap2 = s.scan(&policy::builtin()).expect("scan");
    assert!(s.cache_len() <= snap2.procs.len());
}

#[test]
fn a_missing_root_is_a_scan_error() {
    let mut s = Scanner::new(ProcFs::new("/nonexistent-proc-root"));
    assert!(matches!(
        s.scan(&policy::builtin()),
        Err(ScanError::List { .. })
    ));
}

/// A fixture /proc where process 20 is a chromium whose `cmdline` never answers (a FIFO
/// nobody writes: the way a read behind a hung mount sleeps), process 30 an ordinary one.
fn blocking_fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    std::fs::write(p.join("uptime"), "1000.0 10.0\n").expect("write");
    std::fs::write(p.join("meminfo"), "MemTotal: 100 kB\nMemAvailable: 50 kB\n").expect("write");
    for (pid, comm) in [(20, "chromium"), (30, "bash")] {
        std::fs::create_dir_all(p.join(format!("{pid}/fd"))).expect("mkdir");
        std::fs::write(
            p.join(format!("{pid}/stat")),
            format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 100 10"),
        )
        .expect("write");
        std::fs::write(p.join(format!("{pid}/limits")), "").expect("write");
    }
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        p.join("20/cmdline"),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    std::fs::write(p.join("30/cmdline"), "bash\0").expect("write");
    d
}

#[test]
fn a_process_whose_cmdline_read_blocks_is_skipped_and_counted_and_the_scan_goes_on() {
    let d = blocking_fixture();
    let mut s = Scanner::new(ProcFs::new(d.path()));
    let t = Instant::now();
    let snap = s.scan(&policy::builtin()).expect("scan");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the scan waited {:?}",
        t.elapsed()
    );
    assert_eq!(snap.skipped.blocked, 1);
    assert!(snap.get(20).is_none(), "the blocked process is skipped");
    assert!(snap.get(30).is_some(), "the others are scanned");
    // Next scan: skipped at once, without another read.
    let t = Instant::now();
    let snap = s.scan(&policy::builtin()).expect("scan");
    assert!(t.elapsed() < CMDLINE_DEADLINE, "{:?}", t.elapsed());
    assert_eq!(snap.skipped.blocked, 1);
    // Unblock the stuck reader so the test leaves no thread behind.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open(d.path().join("20/cmdline"));
}

/// A read that blocked once is tried again when its retry is due: a process whose cmdline was
/// only slow (a loaded host, every reader slot briefly taken) is judged by the policy again
/// instead of being skipped — never killed, never reported — for the rest of its life.
#[test]
fn a_process_whose_cmdline_blocked_once_is_judged_again_when_its_retry_is_due() {
    let d = blocking_fixture();
    let mut s = Scanner::new(ProcFs::new(d.path()));
    s.blocked_retry = Duration::ZERO;
    let snap = s.scan(&policy::builtin()).expect("scan");
    assert_eq!(snap.skipped.blocked, 1);
    assert!(snap.get(20).is_none());
    // The read answers now: release the stuck reader, and give the process a real cmdline.
    let fifo = d.path().join("20/cmdline");
    let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    std::fs::remove_file(&fifo).expect("rm fifo");
    std::fs::write(&fifo, "chromium\0--type=renderer\0").expect("write");
    let snap = s.scan(&policy::builtin()).expect("scan");
    assert_eq!(snap.skipped.blocked, 0, "{:?}", snap.skipped);
    let p = snap.get(20).expect("judged again");
    assert_eq!(p.family(), Some("chromium"));
}
