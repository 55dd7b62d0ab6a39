//! Every number in a policy is bounded (README, "Policy reference" → "Bounds"): `policy check`
//! rejects what would overflow the daemon's arithmetic or is absurd, with `FILE:LINE:COLUMN`,
//! and every command that takes a policy refuses it with exit 64 instead of starting.
//!
//! See: issue "Trust: never kill or delete what is not a leak" (a bare-integer `orphaned_for` of
//! 2^64 − 1 passed `policy check`, then `watch` panicked at the first orphan).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leakwarden_tests::{bin, describe, run, workspace_root};

fn overflow_fixture() -> PathBuf {
    workspace_root().join("tests/fixtures/policies/invalid/orphaned-for-overflow.yaml")
}

fn check(path: &Path) -> (Option<i32>, String) {
    let mut c = Command::new(bin("leakwarden"));
    c.args(["policy", "check"]).arg(path);
    let out = run(&mut c);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked"),
        "policy check panicked\n{}",
        describe(&c, &out)
    );
    (out.status.code(), err)
}

// See: issue "Trust: never kill or delete what is not a leak".
#[test]
fn orphaned_for_of_u64_max_seconds_is_rejected_with_its_location() {
    let path = overflow_fixture();
    let (code, err) = check(&path);
    assert_eq!(code, Some(64), "{err}");
    let want = format!("{}:6:21: ", path.display());
    assert!(err.starts_with(&want), "want {want:?} first, got {err:?}");
    assert!(err.contains("365d"), "the message names the bound: {err:?}");
}

/// Before the bound, `watch` accepted this policy and panicked at the first orphan; now it must
/// refuse to start (exit 64) — and never run on with it.
#[test]
fn watch_refuses_a_policy_with_an_unbounded_duration() {
    let mut c = Command::new(bin("leakwarden"));
    c.args(["watch", "--listen", "127.0.0.1:0", "--dry-run", "--policy"])
        .arg(overflow_fixture())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start leakwarden watch");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(30) {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let status = status.unwrap_or_else(|| panic!("watch started with the policy:\n{err}"));
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(err.contains(":6:21: "), "{err}");
}

/// One absurd value per bounded field, each rejected at its own line and column (the second
/// rule carries it, so a locator that finds the first mention of the key would be wrong).
#[test]
fn every_bounded_field_is_rejected_at_its_own_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "rules:\n  - name: fine\n    when: {age: 1h}\n    grace: 1s\n    action: report\n";
    let cases: &[(&str, &str, (usize, usize))] = &[
        ("age", "  - name: r\n    when:\n      age: 366d\n", (8, 12)),
        (
            "grace",
            "  - name: r\n    when: {age: 1h}\n    grace: 11m\n",
            (8, 12),
        ),
        (
            "leak.for",
            "  - name: r\n    when:\n      leak: {resource: fds, for: 400d}\n",
            (8, 34),
        ),
        (
            "zombie_parent.min_zombies",
            "  - name: r\n    when:\n      zombie_parent: {min_zombies: 0}\n",
            (8, 36),
        ),
        (
            "rss_above",
            "  - name: r\n    when:\n      rss_above: 2PiB\n",
            (8, 18),
        ),
        (
            "fds_above",
            "  - name: r\n    when:\n      fds_above: 99999999999\n",
            (8, 18),
        ),
        (
            "fd_ratio_above",
            "  - name: r\n    when:\n      fd_ratio_above: .nan\n",
            (8, 23),
        ),
    ];
    for (what, rule, (line, col)) in cases {
        let p = dir.path().join(format!("{what}.yaml"));
        std::fs::write(&p, format!("{base}{rule}")).expect("write");
        let (code, err) = check(&p);
        assert_eq!(code, Some(64), "{what}: {err}");
        let want = format!("{}:{line}:{col}: ", p.display());
        assert!(
            err.starts_with(&want),
            "{what}: want {want:?} first, got {err:?}"
        );
    }
    let top: &[(&str, &str, (usize, usize))] = &[
        (
            "max_kills_per_minute",
            "max_kills_per_minute: 4294967295\n",
            (1, 23),
        ),
        ("leak.window", "leak:\n  window: 0s\n", (2, 11)),
        (
            "leak.min_samples",
            "leak:\n  min_samples: 100000\n",
            (2, 16),
        ),
        ("leak.alpha", "leak:\n  alpha: .inf\n", (2, 10)),
        (
            "leak.min_relative_slope_per_hour",
            "leak:\n  min_relative_slope_per_hour: -1\n",
            (2, 32),
        ),
        (
            "stale_profiles.older_than",
            "stale_profiles:\n  older_than: 9999999999999\n",
            (2, 15),
        ),
    ];
    for (what, text, (line, col)) in top {
        let p = dir.path().join(format!("{what}.yaml"));
        std::fs::write(&p, text).expect("write");
        let (code, err) = check(&p);
        assert_eq!(code, Some(64), "{what}: {err}");
        let want = format!("{}:{line}:{col}: ", p.display());
        assert!(
            err.starts_with(&want),
            "{what}: want {want:?} first, got {err:?}"
        );
    }
}

/// The largest values the bounds allow are accepted (the bounds are documented ranges, not
/// guesses that reject real policies).
#[test]
fn the_bounds_themselves_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("max.yaml");
    std::fs::write(
        &p,
        concat!(
            "max_kills_per_minute: 100000\n",
            "rules:\n  - name: r\n    when:\n",
            "      orphaned_for: 365d\n      age: 365d\n      rss_above: 1PiB\n",
            "      fds_above: 2147483647\n      fd_ratio_above: 1\n",
            "      leak: {resource: memory, for: 365d}\n",
            "      zombie_parent: {min_zombies: 4194304, for: 365d}\n",
            "    grace: 10m\n    action: kill-tree\n",
            "leak:\n  window: 7d\n  min_samples: 120\n  alpha: 0.49\n",
            "  min_relative_slope_per_hour: 100\n",
            "stale_profiles:\n  older_than: 365d\n",
        ),
    )
    .expect("write");
    let (code, err) = check(&p);
    assert_eq!(code, Some(0), "{err}");
}

/// At the largest values the bounds allow, the daemon's arithmetic holds: an orphan meets a
/// 365-day `orphaned_for` (the deadline `now + (365d − orphaned)` is computed at every scan) and
/// the sidecar keeps scanning and serving. Dry-run, in a private PID namespace.
#[test]
fn watch_survives_an_orphan_under_the_largest_values() {
    use leakwarden_tests::sidecar::{
        http_get, skip_without_unshare, stale_roots, Ns, FAKE_CHROMIUM_FAMILY,
    };
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let pol = ns.write(
        "max.yaml",
        &format!(
            "dry_run: true\nmax_kills_per_minute: 100000\nfamilies:\n{FAKE_CHROMIUM_FAMILY}\
             rules:\n  - name: far\n    family: chromium\n    when:\n      orphaned_for: 365d\n\
             \x20     age: 365d\n    action: kill-tree\n    grace: 10m\n\
             leak:\n  window: 7d\n  min_samples: 120\n{}",
            stale_roots(ns.dir.path()).replace("older_than: 1h", "older_than: 365d")
        ),
    );
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "200ms"]);
    let t = ns.fake_tree("prof-max");
    ns.kill(t.launcher_pid, libc::SIGKILL);
    w.wait_metric(
        "leakwarden_orphan_processes",
        &[("family", "chromium")],
        Duration::from_secs(10),
        |v| v == 4.0,
    );
    let scans = w.metric("leakwarden_scans_total", &[]).unwrap_or(0.0);
    w.wait_metric(
        "leakwarden_scans_total",
        &[],
        Duration::from_secs(10),
        |v| v >= scans + 3.0,
    );
    assert_eq!(http_get(&w.addr, "/healthz").map(|r| r.0).ok(), Some(200));
    assert!(ns.alive(t.browser), "dry-run and 365d: nothing is killed");
    let log = w.log.text();
    assert!(!log.contains("panicked"), "{log}");
}
