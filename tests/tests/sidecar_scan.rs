//! Issue 3, "Checked by": the sidecar's scan and `/metrics` against real process trees built inside
//! a private PID namespace whose PID 1 looks like a container init (`tini`). Each test reports
//! exactly what it built, and nothing it should not.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leakwarden_tests::sidecar::*;
use leakwarden_tests::{chromium, describe, wait_for};

fn policy(ns: &Ns, families: &str, rules: &str, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "families:\n{families}rules:\n{rules}{extra}{}",
        stale_roots(ns.dir.path())
    );
    ns.write("policy.yaml", &text)
}

const NO_RULES: &str = "  - name: orphans\n    when:\n      orphaned_for: 1h\n    action: report\n";

fn ppid(ns: &Ns, pid: i32) -> Option<i32> {
    ns.status_field(pid, "PPid").and_then(|s| s.parse().ok())
}

fn tree_by_profile<'a>(
    scan: &'a serde_json::Value,
    prof: &std::path::Path,
) -> &'a serde_json::Value {
    let p = prof.display().to_string();
    arr(scan, "trees")
        .iter()
        .find(|t| t["profile_dir"].as_str() == Some(p.as_str()))
        .unwrap_or_else(|| panic!("no tree for {p} in scan:\n{scan:#}"))
}

fn sorted(v: &[i32]) -> Vec<i32> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// a) A fake browser tree whose launcher is SIGKILLed is one orphaned tree (seen live by `watch`
/// through its pidfd on the launcher, and by a one-shot scan); a tree whose launcher lives is not.
#[test]
fn orphaned_fake_tree_is_reported_by_scan_and_metrics() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let pol = policy(&ns, FAKE_CHROMIUM_FAMILY, NO_RULES, "");
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "500ms"]);
    let orphan = ns.fake_tree("prof-orphan");
    let owned = ns.fake_tree("prof-owned");
    w.wait_metric(
        "leakwarden_processes",
        &[("family", "chromium")],
        Duration::from_secs(10),
        |v| v == 8.0,
    );
    assert_eq!(
        w.metric("leakwarden_orphan_processes", &[("family", "chromium")]),
        Some(0.0)
    );

    ns.kill(orphan.launcher_pid, libc::SIGKILL);
    wait_for(
        "the orphaned browser to be reparented to PID 1",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (ppid(&ns, orphan.browser) == Some(1)).then_some(()),
    );
    w.wait_metric(
        "leakwarden_orphan_processes",
        &[("family", "chromium")],
        Duration::from_secs(5),
        |v| v == 4.0,
    );
    let m = w.metrics();
    assert_eq!(
        sample(&m, "leakwarden_orphan_trees", &[("family", "chromium")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "leakwarden_trees", &[("family", "chromium")]),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "leakwarden_processes", &[("family", "chromium")]),
        Some(8.0),
        "{m}"
    );

    let scan = ns.scan(&pol);
    let t = tree_by_profile(&scan, &orphan.profile);
    assert_eq!(t["orphaned"], true, "{t:#}");
    assert_eq!(t["processes"], 4, "{t:#}");
    assert_eq!(member_pids(t), sorted(&orphan.tree), "{t:#}");
    assert!(t["orphaned_for_seconds"].as_f64().is_some(), "{t:#}");
    let roles: BTreeSet<String> = arr(t, "members")
        .iter()
        .filter_map(|m| m["role"].as_str().map(str::to_string))
        .collect();
    for r in ["renderer", "gpu-process", "utility"] {
        assert!(roles.contains(r), "role {r} missing in {t:#}");
    }

    let t2 = tree_by_profile(&scan, &owned.profile);
    assert_eq!(t2["orphaned"], false, "{t2:#}");
    assert_eq!(t2["processes"], 4, "{t2:#}");
    assert_eq!(member_pids(t2), sorted(&owned.tree), "{t2:#}");
    assert_eq!(t2["owner"]["pid"], owned.launcher_pid, "{t2:#}");

    assert_eq!(arr(&scan, "trees").len(), 2, "{scan:#}");
    let orphans: Vec<i32> = sorted(
        &arr(&scan, "orphans")
            .iter()
            .map(|o| o["pid"].as_i64().unwrap() as i32)
            .collect::<Vec<_>>(),
    );
    assert_eq!(orphans, sorted(&orphan.tree), "{scan:#}");
    let fam = family(&scan, "chromium").expect("chromium family");
    assert_eq!(fam["processes"], 8, "{fam:#}");
    assert_eq!(fam["orphans"], 4, "{fam:#}");
    assert_eq!(fam["trees"], 2, "{fam:#}");
    assert_eq!(fam["orphan_trees"], 1, "{fam:#}");
    assert!(arr(&scan, "leak_suspects").is_empty(), "{scan:#}");
}

/// b) A process that opens 5 FDs every 200 ms is a leak suspect (`resource="fds"`) within a few
/// seconds; its memory and threads are not.
#[test]
fn fd_leak_is_a_leak_suspect() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fam = "  - name: leaky\n    match:\n      - cmdline: 'marker=leaky'\n";
    let pol = policy(
        &ns,
        fam,
        NO_RULES,
        "leak:\n  window: 30s\n  min_samples: 10\n",
    );
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "200ms"]);
    let f = ns.fixture(&[
        "fds",
        "10",
        "--step",
        "5",
        "--every",
        "200",
        "--marker=leaky",
    ]);
    w.wait_metric(
        "leakwarden_leak_suspects",
        &[("family", "leaky"), ("resource", "fds")],
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    let m = w.metrics();
    for r in ["memory", "threads"] {
        let v = sample(
            &m,
            "leakwarden_leak_suspects",
            &[("family", "leaky"), ("resource", r)],
        );
        assert!(v.unwrap_or(0.0) == 0.0, "{r} is no leak here:\n{m}");
    }

    // The one-shot scan counts FDs exactly: between the counts just before and just after it.
    let before = ns.fd_count(f.pid());
    let scan = ns.scan(&pol);
    let after = ns.fd_count(f.pid());
    let member = arr(&scan, "trees")
        .iter()
        .flat_map(|t| arr(t, "members"))
        .find(|m| m["pid"] == f.pid())
        .unwrap_or_else(|| panic!("fixture {} not in scan:\n{scan:#}", f.pid()));
    let fds = member["fds"].as_u64().expect("fds") as usize;
    assert!(
        before <= fds && fds <= after,
        "scan fds {fds} not within [{before}, {after}]"
    );
}

/// c) A parent that never reaps: its 5 zombies are reported against it, in the scan and in
/// `leakwarden_zombie_processes`.
#[test]
fn zombies_are_counted_per_parent() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fam = "  - name: zparent\n    match:\n      - cmdline: 'marker=zparent'\n";
    let pol = policy(&ns, fam, NO_RULES, "");
    let f = ns.fixture(&["zombies", "5", "--marker=zparent"]);
    let scan = ns.scan(&pol);
    let zp = arr(&scan, "zombie_parents");
    assert_eq!(zp.len(), 1, "{scan:#}");
    assert_eq!(zp[0]["parent_pid"], f.pid(), "{scan:#}");
    assert_eq!(zp[0]["zombies"], 5, "{scan:#}");
    assert_eq!(scan["zombies_total"], 5, "{scan:#}");

    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "500ms"]);
    w.wait_metric(
        "leakwarden_zombie_processes",
        &[],
        Duration::from_secs(10),
        |v| v == 5.0,
    );
}

/// d) Hostile process names: `a) (b` (breaks naive /proc/PID/stat parsing) and names with a
/// newline (a zombie parent and a tree's owner, through fixture symlinks so named). JSON carries
/// them exactly; neither the scan table nor the cleanup table breaks a line on them.
#[test]
fn hostile_comm_is_exact_in_json_and_harmless_in_tables() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fams = format!(
        "{FAKE_CHROMIUM_FAMILY}  - name: hostile\n    match:\n      - comm: '^a\\) \\(b$'\n      - comm: '^lw-fixture\\nevil$'\n"
    );
    let rules = "  - name: hostile-report\n    family: hostile\n    when:\n      age: 0s\n    action: report\n";
    let pol = policy(&ns, &fams, rules, "");
    let paren = ns.fixture(&["rename", "a) (b"]);
    // comm is the link's name (15 bytes): `lw-fixture` + newline + `evil`, still fixture mode.
    let evil = ns.fixture_link("lw-fixture\nevil");
    let newline = ns.fixture_prog(&evil, &["zombies", "2"]);
    // A launcher (the tree's owner) named `lw-fixture) (` + newline + `x`.
    let bot = ns.fixture_link("lw-fixture) (\nx");
    let chromium = ns.fixture_link("chromium");
    let prof = ns.path("prof-hostile");
    let launcher = ns.fixture_prog(
        &bot,
        &[
            "launch",
            chromium.to_str().unwrap(),
            &format!("--user-data-dir={}", prof.display()),
        ],
    );

    let scan = ns.scan(&pol);
    let members: Vec<&serde_json::Value> = arr(&scan, "trees")
        .iter()
        .flat_map(|t| arr(t, "members"))
        .collect();
    let comm_of = |pid: i32| {
        members
            .iter()
            .find(|m| m["pid"] == pid)
            .and_then(|m| m["comm"].as_str())
            .unwrap_or_else(|| panic!("pid {pid} not in scan:\n{scan:#}"))
            .to_string()
    };
    assert_eq!(comm_of(paren.pid()), "a) (b");
    assert_eq!(comm_of(newline.pid()), "lw-fixture\nevil");
    let zp = arr(&scan, "zombie_parents");
    assert_eq!(zp.len(), 1, "{scan:#}");
    assert_eq!(zp[0]["parent_comm"], "lw-fixture\nevil", "{scan:#}");
    assert_eq!(zp[0]["zombies"], 2, "{scan:#}");
    let t = tree_by_profile(&scan, &prof);
    assert_eq!(t["owner"]["comm"], "lw-fixture) (\nx", "{t:#}");
    assert_eq!(t["owner"]["pid"], launcher.pid(), "{t:#}");
    let hostile = family(&scan, "hostile").expect("hostile family");
    assert_eq!(hostile["processes"], 2, "{hostile:#}");

    let check = |what: &str, table: &str| {
        for l in table.lines() {
            assert!(
                !l.starts_with("evil") && !l.starts_with("x ") && l != "x",
                "a comm broke a line of the {what} table: {l:?}\n{table}"
            );
            assert!(
                !l.chars().any(|c| c.is_control()),
                "control character in the {what} table: {l:?}"
            );
        }
    };
    let table = ns.scan_table(&pol);
    assert!(
        table.contains("lw-fixture) (?x"),
        "owner comm not shown sanitized:\n{table}"
    );
    assert!(
        table.contains("lw-fixture?evil"),
        "zombie parent not shown sanitized:\n{table}"
    );
    check("scan", &table);
    let (code, table, err) = ns.cleanup(&pol, &[]);
    assert_eq!(
        code, 2,
        "report verdicts are found in dry-run (exit 2)\n{table}\n{err}"
    );
    assert!(
        table.contains("a) (b"),
        "cleanup table lacks `a) (b`:\n{table}"
    );
    assert!(
        table.contains("lw-fixture?evil"),
        "cleanup table lacks the sanitized name:\n{table}"
    );
    check("cleanup", &table);
}

/// e) Exact counts: 10,000+ FDs in one process and 50 threads in another, as /proc lists them.
#[test]
fn fd_and_thread_counts_are_exact() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fam = "  - name: exact\n    match:\n      - cmdline: 'marker=exact'\n";
    let pol = policy(&ns, fam, NO_RULES, "");
    let many = ns.fixture(&["fds", "10000", "--marker=exact"]);
    let threads = ns.fixture(&["threads", "49", "--marker=exact"]);
    let want_fds = ns.fd_count(many.pid());
    assert!(want_fds >= 10_000, "fixture holds only {want_fds} FDs");

    let scan = ns.scan(&pol);
    let member = |pid: i32| {
        arr(&scan, "trees")
            .iter()
            .flat_map(|t| arr(t, "members"))
            .find(|m| m["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in scan:\n{scan:#}"))
            .clone()
    };
    let m = member(many.pid());
    assert_eq!(m["fds"].as_u64(), Some(want_fds as u64), "{m:#}");
    assert_eq!(m["threads"], 1, "{m:#}");
    let t = member(threads.pid());
    assert_eq!(t["threads"], 50, "{t:#}");
    assert_eq!(
        t["fds"].as_u64(),
        Some(ns.fd_count(threads.pid()) as u64),
        "{t:#}"
    );
    let fam = family(&scan, "exact").expect("exact family");
    assert_eq!(fam["processes"], 2, "{fam:#}");
    assert_eq!(fam["threads"], 51, "{fam:#}");
    assert_eq!(
        fam["fds"].as_u64(),
        Some((want_fds + ns.fd_count(threads.pid())) as u64),
        "{fam:#}"
    );
}

/// f) One real headless Chromium whose launcher is SIGKILLed: exactly one tree, orphaned, its
/// crashpad handlers in it and nothing else; then `cleanup --kill` with the default policy ends
/// every process of it.
#[test]
fn real_chromium_orphaned_is_one_tree_and_cleanup_kills_it() {
    if skip_without_unshare() {
        return;
    }
    let Some(chrome) = chromium() else {
        eprintln!("SKIP: chromium not installed");
        return;
    };
    let ns = Ns::new();
    let pol = default_policy_for_test(&ns, "1s");
    let mut chrome = ns.start_chromium(&chrome, "prof");
    let prof = chrome.profile.clone();

    // While its launcher lives: one tree, crashpad handlers in it, nothing orphaned.
    let scan = ns.scan(&pol);
    let trees = arr(&scan, "trees");
    assert_eq!(trees.len(), 1, "exactly one tree expected:\n{scan:#}");
    assert_eq!(trees[0]["orphaned"], false, "{scan:#}");
    assert_eq!(trees[0]["owner"]["pid"], chrome.sh, "{scan:#}");
    assert!(arr(&scan, "orphans").is_empty(), "{scan:#}");
    let crashpad = family(&scan, "crashpad").expect("crashpad family");
    assert_eq!(crashpad["orphans"], 0, "{crashpad:#}");
    assert_eq!(crashpad["processes"], 2, "{crashpad:#}");

    chrome.orphan(&ns);
    // Let the tree settle (helpers started lazily) before comparing with /proc.
    std::thread::sleep(Duration::from_millis(500));

    let scan = ns.scan(&pol);
    let expected = ns.chromium_pids();
    let trees = arr(&scan, "trees");
    assert_eq!(trees.len(), 1, "exactly one tree expected:\n{scan:#}");
    let t = &trees[0];
    assert_eq!(t["orphaned"], true, "{t:#}");
    assert_eq!(t["profile_dir"], prof.display().to_string(), "{t:#}");
    let fams: Vec<&str> = arr(t, "families")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        fams.contains(&"chromium") && fams.contains(&"crashpad"),
        "{t:#}"
    );
    assert_eq!(member_pids(t), sorted(&expected), "{t:#}");
    let crashpad_members = arr(t, "members")
        .iter()
        .filter(|m| m["family"] == "crashpad")
        .count();
    assert_eq!(crashpad_members, 2, "{t:#}");
    assert_eq!(arr(&scan, "orphans").len(), expected.len(), "{scan:#}");
    assert!(arr(&scan, "leak_suspects").is_empty(), "{scan:#}");
    assert!(arr(&scan, "stale_dirs").is_empty(), "{scan:#}");
    let total: u64 = arr(&scan, "families")
        .iter()
        .filter_map(|f| f["processes"].as_u64())
        .sum();
    assert_eq!(total as usize, expected.len(), "{scan:#}");

    // The policy's `orphaned_for: 1s` is judged from the browser's start time in a one-shot run:
    // wait until the tree is old enough that cleanup must act (on a fast machine the whole test
    // so far takes about a second).
    wait_for(
        "the orphaned tree to pass the policy's orphaned_for",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let scan = ns.scan(&pol);
            arr(&scan, "trees")
                .first()
                .and_then(|t| t["orphaned_for_seconds"].as_f64())
                .filter(|s| *s >= 1.5)
                .map(|_| ())
        },
    );
    let start = Instant::now();
    let (code, out, err) = ns.cleanup(&pol, &["--kill"]);
    assert_eq!(code, 3, "cleanup --kill should act (exit 3)\n{out}\n{err}");
    wait_for(
        "every chromium and crashpad process to end",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || ns.chromium_pids().is_empty().then_some(()),
    );
    eprintln!("cleanup --kill ended the tree in {:?}", start.elapsed());
}

/// g) `promtool check metrics` is clean on `/metrics` (with family and tree series present).
#[test]
fn metrics_pass_promtool_check() {
    if skip_without_unshare() {
        return;
    }
    if Command::new("promtool").arg("--version").output().is_err() {
        panic!("promtool not installed (Debian package prometheus; `make test` installs it)");
    }
    let ns = Ns::new();
    let pol = policy(&ns, FAKE_CHROMIUM_FAMILY, NO_RULES, "");
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "300ms"]);
    let t = ns.fake_tree("prof-promtool");
    ns.kill(t.launcher_pid, libc::SIGKILL);
    w.wait_metric(
        "leakwarden_orphan_processes",
        &[("family", "chromium")],
        Duration::from_secs(10),
        |v| v == 4.0,
    );
    let body = w.metrics();
    for name in [
        "leakwarden_processes",
        "leakwarden_orphan_processes",
        "leakwarden_zombie_processes",
        "leakwarden_family_resident_memory_bytes",
        "leakwarden_family_open_fds",
        "leakwarden_scan_duration_seconds_bucket",
        "leakwarden_build_info",
        "leakwarden_http_connections_open",
        "leakwarden_http_connections_evicted_total",
        "leakwarden_http_connections_refused_total",
        "leakwarden_http_accept_errors_total",
        "process_open_fds",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{body}"
        );
    }
    let mut c = Command::new("promtool");
    c.args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics is not clean:\n{}",
        describe(&c, &out)
    );
}

/// h) The sidecar's own FD count is flat over 50 scrapes (node_exporter's
/// TestFileDescriptorLeak idea).
#[test]
fn sidecar_fds_stay_flat_over_scrapes() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let pol = policy(&ns, FAKE_CHROMIUM_FAMILY, NO_RULES, "");
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "200ms"]);
    for _ in 0..5 {
        w.metrics();
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = ns.fd_count(w.ns_pid);
    for _ in 0..50 {
        w.metrics();
    }
    let settled = wait_for(
        "the sidecar's FD count to come back to where it was",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let n = ns.fd_count(w.ns_pid);
            (n <= before).then_some(n)
        },
    );
    assert!(settled <= before, "FDs before {before}, after {settled}");
    let self_fds = w.metric("process_open_fds", &[]).expect("process_open_fds");
    assert!(
        (self_fds as i64 - before as i64).abs() <= 2,
        "process_open_fds {self_fds} vs /proc {before}"
    );
}
