//! Issue 4, "Checked by": killing by policy, safely. Every test runs the sidecar and its victims
//! inside a private PID namespace (`unshare --pid --fork --mount-proc`), so nothing else on the
//! machine can be reached.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use leakwarden_tests::sidecar::*;
use leakwarden_tests::{bin, describe, run, wait_for};

fn policy(ns: &Ns, families: &str, rules: &str, extra: &str) -> PathBuf {
    policy_text_in(ns.dir.path(), "policy.yaml", families, rules, extra)
}

fn policy_text_in(dir: &Path, name: &str, families: &str, rules: &str, extra: &str) -> PathBuf {
    let text = format!(
        "families:\n{families}rules:\n{rules}{extra}{}",
        stale_roots(dir)
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const KILL_ORPHANS: &str = "  - name: kill-orphans\n    family: chromium\n    when:\n      orphaned_for: 2s\n    action: kill-tree\n    grace: 1s\n";

fn counter(w: &Watch, rule: &str, outcome: &str) -> f64 {
    w.metric(
        "leakwarden_kills_total",
        &[("rule", rule), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// Wait until the sidecar has completed `n` more scans.
fn wait_scans(w: &Watch, n: f64) {
    let now = w.metric("leakwarden_scans_total", &[]).unwrap_or(0.0);
    w.wait_metric(
        "leakwarden_scans_total",
        &[],
        Duration::from_secs(30),
        |v| v >= now + n,
    );
}

/// a) An orphaned fake tree is killed whole within two scan intervals of `orphaned_for` being
/// met; a decoy named `chromium-notes`, a tree whose launcher lives, PID 1 (`tini`) and the
/// sidecar itself survive — the last two although a rule matches them (outcome `protected`).
#[test]
fn orphaned_tree_is_killed_whole_and_decoys_and_protected_survive() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fams = format!(
        "{FAKE_CHROMIUM_FAMILY}  - name: self\n    match:\n      - comm: '^(tini|leakwarden)$'\n"
    );
    let rules = format!(
        "{KILL_ORPHANS}  - name: touch-self\n    family: self\n    when:\n      age: 0s\n    action: terminate\n    grace: 1s\n"
    );
    let pol = policy(&ns, &fams, &rules, "");
    let interval = Duration::from_secs(1);
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "1s"]);
    let decoy_link = ns.fixture_link("chromium-notes");
    let decoy = ns.fixture_prog(&decoy_link, &["--marker=decoy"]);
    let victim = ns.fake_tree("prof-victim");
    let owned = ns.fake_tree("prof-owned");
    w.wait_metric(
        "leakwarden_processes",
        &[("family", "chromium")],
        Duration::from_secs(10),
        |v| v == 8.0,
    );
    assert!(decoy.pids.len() >= 2, "decoy tree: {:?}", decoy.pids);

    let t0 = Instant::now();
    ns.kill(victim.launcher_pid, libc::SIGKILL);
    let deadline = Duration::from_secs(2) + 2 * interval + Duration::from_secs(1);
    wait_for(
        "every process of the orphaned tree to end",
        deadline,
        Duration::from_millis(50),
        || victim.tree.iter().all(|&p| !ns.alive(p)).then_some(()),
    );
    let took = t0.elapsed();
    eprintln!(
        "orphaned tree ended {took:?} after its launcher died (orphaned_for 2s, interval 1s)"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "killed before orphaned_for (2s) was met: {took:?}"
    );
    w.wait_metric(
        "leakwarden_kills_total",
        &[("rule", "kill-orphans")],
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    let ended = counter(&w, "kill-orphans", "terminated") + counter(&w, "kill-orphans", "killed");
    assert!(ended >= 1.0, "{}", w.metrics());
    assert_eq!(counter(&w, "kill-orphans", "failed"), 0.0);

    // Two more scans: nothing else is touched.
    wait_scans(&w, 2.0);
    for &p in owned.tree.iter().chain([&owned.launcher_pid]) {
        assert!(ns.alive(p), "pid {p} of the owned tree was killed");
    }
    for &p in &decoy.pids {
        assert!(ns.alive(p), "decoy pid {p} was killed");
    }
    assert!(ns.alive(1), "PID 1 was killed");
    assert!(ns.alive(w.ns_pid), "the sidecar was killed");
    assert!(
        counter(&w, "touch-self", "protected") >= 1.0,
        "protected not counted:\n{}",
        w.metrics()
    );
    assert_eq!(counter(&w, "touch-self", "terminated"), 0.0);
    assert_eq!(counter(&w, "touch-self", "killed"), 0.0);
}

/// A killed tree's processes stay zombies under a PID 1 that does not reap (here `sleep` named
/// `pause`). They are dead: `watch` must neither count them as running or
/// orphaned family processes nor "kill" them again on every scan (a one-shot scan already
/// leaves them out).
#[test]
fn zombies_of_a_killed_tree_are_not_counted_or_killed_again() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::non_reaping();
    let rules = KILL_ORPHANS.replace("orphaned_for: 2s", "orphaned_for: 1s");
    let pol = policy(&ns, FAKE_CHROMIUM_FAMILY, &rules, "");
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "300ms"]);
    let victim = ns.fake_tree("prof-victim");
    let owned = ns.fake_tree("prof-owned");
    // Let the tree grow older than the scanner's per-identity cache threshold (2 s), so `watch`
    // has cached its classification while it lived — as for any real browser.
    std::thread::sleep(Duration::from_millis(2500));
    wait_scans(&w, 1.0);
    ns.kill(victim.launcher_pid, libc::SIGKILL);
    wait_for(
        "the orphaned tree to be killed",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || victim.tree.iter().all(|&p| !ns.alive(p)).then_some(()),
    );
    assert!(
        victim
            .tree
            .iter()
            .all(|&p| ns.state(p).as_deref() == Some("Z")),
        "this PID 1 does not reap: the killed tree should be zombies"
    );
    wait_scans(&w, 4.0);
    let scan = ns.scan(&pol);
    let t = arr(&scan, "trees");
    assert_eq!(t.len(), 1, "one-shot scan: only the owned tree\n{scan:#}");
    assert_eq!(member_pids(&t[0]), owned.tree);
    let m = w.metrics();
    let ended = counter(&w, "kill-orphans", "terminated") + counter(&w, "kill-orphans", "killed");
    assert!(
        ended <= victim.tree.len() as f64,
        "the {} processes of the tree were \"ended\" {ended} times: zombies were killed again\n{m}",
        victim.tree.len()
    );
    assert_eq!(
        sample(&m, "leakwarden_orphan_processes", &[("family", "chromium")]),
        Some(0.0),
        "zombies of the killed tree counted as orphans:\n{m}"
    );
    assert_eq!(
        sample(&m, "leakwarden_processes", &[("family", "chromium")]),
        Some(owned.tree.len() as f64),
        "only the owned tree runs:\n{m}"
    );
    assert_eq!(
        sample(&m, "leakwarden_trees", &[("family", "chromium")]),
        Some(1.0),
        "{m}"
    );
}

/// b) A process that ignores SIGTERM is SIGKILLed once `grace` has passed.
#[test]
fn sigterm_ignoring_process_is_sigkilled_after_grace() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fams = "  - name: stubborn\n    match:\n      - cmdline: 'marker=stubborn'\n";
    let rules = "  - name: stubborn\n    family: stubborn\n    when:\n      age: 1s\n    action: terminate\n    grace: 1s\n";
    let pol = policy(&ns, fams, rules, "");
    let w = ns.watch(&[
        "--policy",
        pol.to_str().unwrap(),
        "--interval",
        "500ms",
        "--log-format",
        "json",
    ]);
    let f = ns.fixture(&["ignore-term", "--marker=stubborn"]);
    let pid = f.pid();
    wait_for(
        "the SIGTERM-ignoring process to end",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!ns.alive(pid)).then_some(()),
    );
    w.wait_metric(
        "leakwarden_kills_total",
        &[("rule", "stubborn"), ("outcome", "killed")],
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    assert_eq!(counter(&w, "stubborn", "terminated"), 0.0);
    let ev = wait_for(
        "the kill's audit event",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            w.audit()
                .into_iter()
                .find(|e| e["event"] == "kill" && e["pid"] == pid)
        },
    );
    assert_eq!(ev["outcome"], "killed", "{ev:#}");
    assert_eq!(ev["rule"], "stubborn", "{ev:#}");
    let ms = ev["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!(
        (1000..5000).contains(&ms),
        "SIGKILL should follow SIGTERM after the 1s grace, took {ms} ms: {ev:#}"
    );
}

/// c) `watch --dry-run` and `cleanup` without `--kill` (and `cleanup --kill` under a policy with
/// `dry_run: true`) signal nothing: every process stays alive; the verdicts are counted/listed.
#[test]
fn dry_run_and_cleanup_without_kill_signal_nothing() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fams = format!(
        "{FAKE_CHROMIUM_FAMILY}  - name: stubborn\n    match:\n      - cmdline: 'marker=stubborn'\n"
    );
    let rules = format!(
        "{}  - name: stubborn\n    family: stubborn\n    when:\n      age: 0s\n    action: terminate\n    grace: 1s\n",
        KILL_ORPHANS.replace("orphaned_for: 2s", "orphaned_for: 1s")
    );
    let pol = policy(&ns, &fams, &rules, "");
    let w = ns.watch(&[
        "--policy",
        pol.to_str().unwrap(),
        "--interval",
        "300ms",
        "--dry-run",
    ]);
    let tree = ns.fake_tree("prof-dry");
    let other = ns.fixture(&["sleep", "--marker=stubborn"]);
    ns.kill(tree.launcher_pid, libc::SIGKILL);
    w.wait_metric(
        "leakwarden_kills_total",
        &[("rule", "kill-orphans"), ("outcome", "dry_run")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    w.wait_metric(
        "leakwarden_kills_total",
        &[("rule", "stubborn"), ("outcome", "dry_run")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    wait_scans(&w, 3.0);
    let mut all: Vec<i32> = tree.tree.clone();
    all.push(other.pid());
    for &p in &all {
        assert!(ns.alive(p), "dry-run watch: pid {p} was signalled");
    }
    for o in ["terminated", "killed"] {
        assert_eq!(counter(&w, "kill-orphans", o), 0.0, "{}", w.metrics());
        assert_eq!(counter(&w, "stubborn", o), 0.0, "{}", w.metrics());
    }
    drop(w);

    // cleanup without --kill: found, listed, exit 2, nothing signalled.
    let (code, table, err) = ns.cleanup(&pol, &[]);
    assert_eq!(
        code, 2,
        "cleanup (dry-run) with findings exits 2\n{table}\n{err}"
    );
    for want in ["kill-orphans", "kill-tree", "stubborn", "terminate"] {
        assert!(
            table.contains(want),
            "cleanup table lacks {want:?}:\n{table}"
        );
    }
    let (code, json, err) = ns.cleanup(&pol, &["--format", "json"]);
    assert_eq!(code, 2, "{json}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("cleanup JSON");
    assert_eq!(v["dry_run"], true, "{v:#}");
    let found: Vec<&str> = arr(&v, "items")
        .iter()
        .filter_map(|i| i["rule"].as_str())
        .collect();
    assert!(
        found.contains(&"kill-orphans") && found.contains(&"stubborn"),
        "{v:#}"
    );

    // cleanup --kill, but the policy says dry_run: signal nothing either.
    let dry = policy_text_in(ns.dir.path(), "dry.yaml", &fams, &rules, "dry_run: true\n");
    let (code, table, err) = ns.cleanup(&dry, &["--kill"]);
    assert_eq!(
        code, 2,
        "policy dry_run: cleanup --kill must not act\n{table}\n{err}"
    );
    for &p in &all {
        assert!(ns.alive(p), "cleanup without acting: pid {p} was signalled");
    }
}

/// Every policy in `dir` is rejected by `policy check` with exit 64 and a message that starts
/// with `FILE:L:C: `, where its last `# expect-error-at: L:C` line says. Returns how many.
fn check_invalid_dir(dir: &Path) -> usize {
    let mut n = 0;
    let mut wrong = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect-error-at: "))
            .next_back()
            .unwrap_or_else(|| panic!("{}: no `# expect-error-at: L:C` line", path.display()));
        let mut c = Command::new(bin("leakwarden"));
        c.args(["policy", "check"]).arg(&path);
        let out = run(&mut c);
        assert_eq!(out.status.code(), Some(64), "{}", describe(&c, &out));
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!("{}:{}: ", path.display(), at.trim());
        if !err.starts_with(&want) {
            wrong.push(format!("want {want:?} first, got: {}", err.trim_end()));
        }
        n += 1;
    }
    assert!(
        wrong.is_empty(),
        "errors located wrongly:\n{}",
        wrong.join("\n")
    );
    n
}

fn fixtures_dir() -> PathBuf {
    leakwarden_tests::workspace_root().join("tests/fixtures/policies")
}

/// d) Every policy in `tests/fixtures/policies/invalid/` is rejected with exit 64 and a
/// `file:line:column` message at the place its last line (`# expect-error-at: L:C`) names; every
/// one in `valid/` is accepted; the built-in default round-trips.
#[test]
fn policy_check_locates_errors_and_accepts_valid_policies() {
    let leakwarden = bin("leakwarden");
    let n_invalid = check_invalid_dir(&fixtures_dir().join("invalid"));
    assert!(n_invalid >= 3);
    let mut n_valid = 0;
    for e in std::fs::read_dir(fixtures_dir().join("valid")).unwrap() {
        let path = e.unwrap().path();
        let mut c = Command::new(&leakwarden);
        c.args(["policy", "check"]).arg(&path);
        let out = run(&mut c);
        assert!(out.status.success(), "{}", describe(&c, &out));
        n_valid += 1;
    }
    assert!(n_valid >= 2);

    let dir = tempdir();
    let mut c = Command::new(&leakwarden);
    c.args(["policy", "default"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", describe(&c, &out));
    let p = write_in(&dir, "default.yaml", &String::from_utf8_lossy(&out.stdout));
    let mut c = Command::new(&leakwarden);
    c.args(["policy", "check"]).arg(&p);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", describe(&c, &out));

    // A bad policy stops every command that takes one, with exit 64.
    let bad = fixtures_dir().join("invalid/typo-field.yaml");
    for sub in [
        &["scan"][..],
        &["cleanup"],
        &["watch", "--listen", "127.0.0.1:0"],
    ] {
        let mut c = Command::new(&leakwarden);
        c.args(sub).arg("--policy").arg(&bad);
        let out = run(&mut c);
        assert_eq!(out.status.code(), Some(64), "{}", describe(&c, &out));
    }
}

/// d) Errors found after parsing (an unknown family in a rule, a rule defined twice) are located
/// at their own place, not at the first text that happens to spell the same name (a comment, a
/// longer name containing it, the first of two definitions).
#[test]
fn policy_check_locates_semantic_errors_at_their_place() {
    let n = check_invalid_dir(&fixtures_dir().join("invalid-semantic"));
    assert!(n >= 3);
}

/// d) A bad reload (the policy file rewritten with a typo, then SIGHUP) is rejected and counted;
/// the old policy stays in force and its rule still kills.
#[test]
fn bad_reload_keeps_the_old_policy_in_force() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fams = "  - name: victim\n    match:\n      - cmdline: 'marker=victim'\n";
    let rules = "  - name: kill-victim\n    family: victim\n    when:\n      age: 1s\n    action: terminate\n    grace: 1s\n";
    let pol = policy(&ns, fams, rules, "");
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "300ms"]);
    assert_eq!(
        w.metric("leakwarden_policy_last_reload_success", &[]),
        Some(1.0)
    );
    // The typo would disable the rule if it were accepted.
    let bad = std::fs::read_to_string(&pol)
        .unwrap()
        .replace("age: 1s", "agee: 1s");
    let tmp = ns.path("policy.yaml.new");
    std::fs::write(&tmp, bad).unwrap();
    std::fs::rename(&tmp, &pol).unwrap();
    ns.kill(w.ns_pid, libc::SIGHUP);
    w.wait_metric(
        "leakwarden_policy_reloads_total",
        &[("outcome", "rejected")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert_eq!(
        w.metric("leakwarden_policy_last_reload_success", &[]),
        Some(0.0)
    );
    assert!(ns.alive(w.ns_pid), "the sidecar died on a bad reload");

    let f = ns.fixture(&["sleep", "--marker=victim"]);
    wait_for(
        "the old rule to kill the victim",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!ns.alive(f.pid())).then_some(()),
    );
    w.wait_metric(
        "leakwarden_kills_total",
        &[("rule", "kill-victim"), ("outcome", "terminated")],
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
}

/// e) `watch` as PID 1 of a namespace: a rule kills a parent that does not reap its zombies; the
/// zombies pass to PID 1, the sidecar, which reaps them.
#[test]
fn sidecar_as_pid1_reaps_zombies_of_a_killed_non_reaping_parent() {
    if skip_without_unshare() {
        return;
    }
    let dir = tempdir();
    let fams = "  - name: zparent\n    match:\n      - cmdline: 'marker=zparent'\n";
    let rules = "  - name: kill-zombie-parent\n    family: zparent\n    when:\n      zombie_parent: { min_zombies: 3, for: 1s }\n    action: terminate\n    grace: 1s\n";
    let pol = policy_text_in(dir.path(), "policy.yaml", fams, rules, "");
    let (ns, w) = Ns::with_sidecar_init(
        dir,
        &["--policy", pol.to_str().unwrap(), "--interval", "300ms"],
    );
    let f = ns.fixture(&["zombies", "4", "--marker=zparent"]);
    let zombies = ns.children(f.pid());
    assert_eq!(zombies.len(), 4, "{zombies:?}");
    wait_for(
        "the parent to be killed",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!ns.alive(f.pid())).then_some(()),
    );
    wait_for(
        "the zombies to be reaped (gone from /proc)",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || zombies.iter().all(|&z| ns.state(z).is_none()).then_some(()),
    );
    w.wait_metric(
        "leakwarden_zombies_reaped_total",
        &[],
        Duration::from_secs(10),
        |v| v >= 4.0,
    );
    w.wait_metric(
        "leakwarden_zombie_processes",
        &[],
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    assert!(
        counter(&w, "kill-zombie-parent", "terminated")
            + counter(&w, "kill-zombie-parent", "killed")
            >= 1.0,
        "{}",
        w.metrics()
    );
    assert!(ns.alive(1), "the sidecar (PID 1) died");
}

/// `cleanup --kill` kills a tree that is orphaned when it runs, whole, and never one whose
/// launcher is alive (exit 3: acted).
#[test]
fn cleanup_kill_ends_the_orphaned_tree_never_an_owned_one() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let rules = KILL_ORPHANS.replace("orphaned_for: 2s", "orphaned_for: 1s");
    let pol = policy(&ns, FAKE_CHROMIUM_FAMILY, &rules, "");
    let victim = ns.fake_tree("prof-victim");
    let owned = ns.fake_tree("prof-owned");
    ns.kill(victim.launcher_pid, libc::SIGKILL);
    // One-shot: "orphaned for" counts from the start time; wait until 1 s is met.
    let (code, out, err) = wait_for(
        "cleanup --kill to act",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let r = ns.cleanup(&pol, &["--kill"]);
            (r.0 != 0).then_some(r)
        },
    );
    assert_eq!(code, 3, "cleanup --kill acted: exit 3\n{out}\n{err}");
    assert!(out.contains("kill-orphans"), "{out}");
    wait_for(
        "every process of the orphaned tree to end",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || victim.tree.iter().all(|&p| !ns.alive(p)).then_some(()),
    );
    for &p in owned.tree.iter().chain([&owned.launcher_pid]) {
        assert!(ns.alive(p), "pid {p} of the owned tree was killed\n{out}");
    }
    // Nothing left to do: the owned tree is not a finding.
    let (code, out, err) = ns.cleanup(&pol, &["--kill"]);
    assert_eq!(code, 0, "nothing left: exit 0\n{out}\n{err}");
}

/// Real Chromium: `watch` with the default policy (its `orphaned_for` lowered to 2 s) kills an
/// orphaned browser whole — renderers, GPU and utility processes and the two crashpad handlers,
/// which `setsid()` and escape any process-group kill — and no other process.
#[test]
fn real_chromium_orphan_is_killed_whole_by_watch_with_crashpad() {
    if skip_without_unshare() {
        return;
    }
    let Some(chrome) = leakwarden_tests::chromium() else {
        eprintln!("SKIP: chromium not installed");
        return;
    };
    let ns = Ns::new();
    let pol = default_policy_for_test(&ns, "2s");
    let w = ns.watch(&["--policy", pol.to_str().unwrap(), "--interval", "1s"]);
    let mut keep = ns.start_chromium(&chrome, "prof-keep");
    let keep_first = ns.chromium_pids();
    let mut victim = ns.start_chromium(&chrome, "prof-victim");
    // The kept browser may start more renderers meanwhile: they carry its profile.
    let keep_arg = format!("--user-data-dir={}", keep.profile.display());
    let (keep_pids, victim_pids): (Vec<NsProc>, Vec<NsProc>) = ns
        .procs()
        .into_iter()
        .filter(|p| is_chromium_family(p) && p.state != "Z")
        .partition(|p| keep_first.contains(&p.pid) || p.cmdline.contains(&keep_arg));
    let keep_pids: Vec<i32> = keep_pids.iter().map(|p| p.pid).collect();
    let victim_pids: Vec<i32> = victim_pids.iter().map(|p| p.pid).collect();
    let t0 = Instant::now();
    victim.orphan(&ns);
    let deadline = Duration::from_secs(2) + Duration::from_secs(2) + Duration::from_secs(6);
    while !victim_pids.iter().all(|&p| !ns.alive(p)) {
        if t0.elapsed() > deadline {
            let left: Vec<NsProc> = ns
                .procs()
                .into_iter()
                .filter(|p| victim_pids.contains(&p.pid) && ns.alive(p.pid))
                .collect();
            let scan = ns.scan(&pol);
            panic!(
                "after {deadline:?}, still alive: {left:#?}\nscan:\n{scan:#}\nmetrics:\n{}\nlog:\n{}",
                w.metrics()
                    .lines()
                    .filter(|l| l.contains("kills_total") || l.contains("orphan"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                w.log.text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "orphaned Chromium ({} processes) ended {:?} after its launcher died",
        victim_pids.len(),
        t0.elapsed()
    );
    for &p in &keep_pids {
        assert!(ns.alive(p), "pid {p} of the owned Chromium was killed");
    }
    assert!(ns.alive(keep.sh));
    // What is left is exactly the kept browser: its profile's processes and its two handlers.
    let left: Vec<NsProc> = ns
        .procs()
        .into_iter()
        .filter(|p| is_chromium_family(p) && p.state != "Z")
        .collect();
    for p in &left {
        assert!(
            keep_first.contains(&p.pid) || p.cmdline.contains(&keep_arg),
            "left alive but not the kept browser's: {p:#?}"
        );
    }
    let handlers = left
        .iter()
        .filter(|p| p.comm.starts_with("chrome_crashpad"))
        .count();
    assert_eq!(
        handlers, 2,
        "the kept browser's two crashpad handlers: {left:#?}"
    );
    w.wait_metric(
        "leakwarden_kills_total",
        &[("rule", "orphaned-browser-tree")],
        Duration::from_secs(10),
        |v| v >= victim_pids.len() as f64,
    );
    let ended = counter(&w, "orphaned-browser-tree", "terminated")
        + counter(&w, "orphaned-browser-tree", "killed");
    assert!(ended >= 1.0, "{}", w.metrics());
    assert_eq!(counter(&w, "orphaned-browser-tree", "failed"), 0.0);
    let _ = keep.launcher.kill();
}

/// A process that raises its soft RLIMIT_NOFILE is judged against the new limit. Two shells,
/// each under a soft limit of 400, open 300 descriptors once told to (75 % of 400); before that,
/// one of them has its limit raised to 4,096 from outside (`prlimit --pid`, as a service does to
/// itself with setrlimit). The rule `fd_ratio_above: 0.5` ends the other one, and never the one
/// that is at 7 % of its limit. The sidecar used to keep a limit it had read for 30 s and
/// terminated both.
#[test]
fn an_fd_ratio_rule_judges_a_raised_limit_not_the_one_it_read_first() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fams = "  - name: raised\n    match:\n      - cmdline: 'marker=fd-raised'\n  - name: control\n    match:\n      - cmdline: 'marker=fd-control'\n";
    let rules = "  - name: fds-near-limit\n    family: [raised, control]\n    when:\n      fd_ratio_above: 0.5\n    action: terminate\n    grace: 1s\n";
    let pol = policy(&ns, fams, rules, "");
    let w = ns.watch(&[
        "--policy",
        pol.to_str().unwrap(),
        "--interval",
        "200ms",
        "--log-format",
        "json",
    ]);
    let go = ns.path("go");
    let never = ns.path("never");
    run(Command::new("mkfifo").arg(&never));
    // $0 is the marker; $1 the file that says "open them", $2 a FIFO nobody writes (the shell
    // then waits without children), $3 the file that says "opened".
    let script = r#"while [ ! -e "$1" ]; do sleep 0.05; done
for i in $(seq 300); do exec {fd}</dev/null; done
: >"$3"; read -r _ <"$2""#;
    let mut holders = Vec::new();
    for name in ["raised", "control"] {
        let mut c = ns.cmd("prlimit");
        c.args(["--nofile=400:4096", "--", "bash", "-c", script])
            .arg(format!("marker=fd-{name}"))
            .arg(&go)
            .arg(&never)
            .arg(ns.path(&format!("{name}.opened")))
            .stdin(std::process::Stdio::null());
        holders.push(c.spawn().expect("spawn a holder"));
    }
    let pid_of = |name: &str| {
        let needle = format!("marker=fd-{name}");
        wait_for(
            &format!("the {name} shell"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                ns.procs()
                    .into_iter()
                    .find(|p| p.comm == "bash" && p.cmdline.contains(&needle))
                    .map(|p| p.pid)
            },
        )
    };
    let (raised, control) = (pid_of("raised"), pid_of("control"));
    // Past the age at which a limit is read at every scan, and seen by the sidecar since.
    std::thread::sleep(Duration::from_secs(3));
    wait_scans(&w, 3.0);
    run(ns
        .cmd("prlimit")
        .args(["--pid", &raised.to_string(), "--nofile=4096:4096"]));
    std::fs::write(&go, "").expect("write go");
    for name in ["raised", "control"] {
        let opened = ns.path(&format!("{name}.opened"));
        wait_for(
            &format!("the {name} shell to open its descriptors"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || opened.exists().then_some(()),
        );
    }
    wait_for(
        "the control shell (300 of 400 FDs) to be terminated",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || (!ns.alive(control)).then_some(()),
    );
    wait_scans(&w, 10.0);
    assert!(
        ns.alive(raised),
        "a shell at 300 of 4,096 FDs was ended: {:#?}",
        w.audit()
    );
    assert!(ns.fd_count(raised) >= 300);
    assert_eq!(counter(&w, "fds-near-limit", "terminated"), 1.0);
    let ratio = w
        .metric("leakwarden_fd_limit_ratio_max", &[("family", "raised")])
        .expect("the raised family's ratio");
    assert!(ratio < 0.1, "300/4,096 exported as {ratio}");
    for mut h in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
}
