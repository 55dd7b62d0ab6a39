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

/// A fixture /proc with one `chromium` (a family member under the built-in policy), pid 40,
/// started `age_s` seconds before the fixture's uptime of 1000 s.
fn limit_fixture(age_s: f64) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    std::fs::write(p.join("uptime"), "1000.0 10.0\n").expect("write");
    std::fs::write(p.join("meminfo"), "MemTotal: 100 kB\nMemAvailable: 50 kB\n").expect("write");
    std::fs::create_dir_all(p.join("40")).expect("mkdir");
    let (clk_tck, _) = proc::clock_ticks_and_page_size();
    let start = ((1000.0 - age_s) * clk_tck as f64) as u64;
    std::fs::write(p.join("40/start"), start.to_string()).expect("write");
    set_comm(&d, "chromium");
    std::fs::write(p.join("40/cmdline"), "chromium\0--user-data-dir=/x/p\0").expect("write");
    set_fds(&d, 0);
    set_soft_limit(&d, 1024);
    d
}

fn set_comm(d: &tempfile::TempDir, comm: &str) {
    let p = d.path();
    let start = std::fs::read_to_string(p.join("40/start")).expect("read");
    std::fs::write(
        p.join("40/stat"),
        format!("40 ({comm}) S 1 40 40 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 100 10"),
    )
    .expect("write");
}

/// `n` open FDs, the way this kernel's /proc counts them (the size of `fd`, or its entries).
fn set_fds(d: &tempfile::TempDir, n: usize) {
    let fd = d.path().join("40/fd");
    let _ = std::fs::remove_dir_all(&fd);
    let _ = std::fs::remove_file(&fd);
    if ProcFs::new(d.path()).fd_fast_path() {
        std::fs::write(&fd, vec![b'x'; n]).expect("write");
    } else {
        std::fs::create_dir_all(&fd).expect("mkdir");
        for i in 0..n {
            std::fs::write(fd.join(i.to_string()), "").expect("write");
        }
    }
}

fn set_soft_limit(d: &tempfile::TempDir, soft: u64) {
    std::fs::write(
        d.path().join("40/limits"),
        format!(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max open files            {soft:<20} 1048576              files     \n"
        ),
    )
    .expect("write");
}

fn soft_limit_seen(s: &mut Scanner, policy: &Policy) -> Option<u64> {
    let snap = s.scan(policy).expect("scan");
    let p = snap.get(40).expect("pid 40 scanned");
    assert_eq!(p.family(), Some("chromium"));
    p.fd_soft_limit
}

/// A process raises its own soft RLIMIT_NOFILE as it starts (Chromium, Go and Java do;
/// `prlimit --nofile=… -- PROGRAM` sets it just before its exec). The limit read at the first
/// scan was kept for 30 s: a leak's time to the limit was projected against the wrong limit
/// (incident_task_leak: 20,000 instead of 1,024, "6 minutes" for an 18-second leak).
#[test]
fn a_young_process_that_changes_its_fd_limit_is_read_again_at_the_next_scan() {
    let d = limit_fixture(0.5);
    let mut s = Scanner::new(ProcFs::new(d.path()));
    let pol = policy::builtin();
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(1024));
    set_soft_limit(&d, 20000);
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(20000));
}

/// An exec (a new comm under the same pid and start time) may come with a new limit.
#[test]
fn an_exec_is_followed_by_a_fresh_fd_limit() {
    let d = limit_fixture(100.0);
    let mut s = Scanner::new(ProcFs::new(d.path()));
    let pol = policy::builtin();
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(1024));
    set_soft_limit(&d, 4096);
    assert_eq!(
        soft_limit_seen(&mut s, &pol),
        Some(1024),
        "cached while nothing changed"
    );
    set_comm(&d, "chrome");
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(4096));
}

/// The safety case: an older process holding 600 FDs raises its limit from 1,024 to 65,536. A
/// rule `fd_ratio_above: 0.5` must judge 600/65,536, not the cached 600/1,024 — with the old
/// 30-second cache it would have terminated a process that was nowhere near its limit.
#[test]
fn a_process_near_its_fd_limit_has_it_read_at_every_scan() {
    let d = limit_fixture(100.0);
    let mut s = Scanner::new(ProcFs::new(d.path()));
    let pol = policy::builtin();
    set_fds(&d, 600);
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(1024));
    set_soft_limit(&d, 65536);
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(65536));
    // Far from it now: the cached value serves (no read per scan for most processes).
    set_soft_limit(&d, 2048);
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(65536));
}

/// A ratio rule below one half lowers the share at which the limit is read every scan.
#[test]
fn a_low_fd_ratio_rule_has_limits_read_from_its_threshold() {
    let d = limit_fixture(100.0);
    let mut s = Scanner::new(ProcFs::new(d.path()));
    let mut pol = policy::builtin();
    set_fds(&d, 400);
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(1024));
    set_soft_limit(&d, 8192);
    assert_eq!(
        soft_limit_seen(&mut s, &pol),
        Some(1024),
        "400/1024 is below one half"
    );
    let mut rule = pol.rules[0].clone();
    rule.name = "fd-ratio".into();
    rule.when = policy::Conditions {
        fd_ratio_above: Some(0.3),
        ..Default::default()
    };
    pol.rules.push(rule);
    assert_eq!(soft_limit_seen(&mut s, &pol), Some(8192));
}
