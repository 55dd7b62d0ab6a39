//! Issue 12, "hostile /tmp cannot stop or steer it". Every test puts something anyone could put
//! in a shared /tmp into the sidecar's stale-profile root (the test's own directory, inside a
//! private PID namespace) and checks that nothing blocks, nothing in use or outside the roots is
//! removed, and what should go goes. Each prints a `HOSTILE |` line for BENCHMARKS.md.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use leakwarden_tests::sidecar::*;
use leakwarden_tests::{bin, wait_for};

/// A policy that only removes stale directories under the test's directory (1 s old), kills
/// orphaned fake trees after 1 s, and signals nothing else.
fn policy(ns: &Ns, extra_roots: &[&Path]) -> PathBuf {
    let mut roots = vec![format!("'{}'", ns.dir.path().display())];
    roots.extend(extra_roots.iter().map(|r| format!("'{}'", r.display())));
    let text = format!(
        "families:\n{FAKE_CHROMIUM_FAMILY}rules:\n  - name: kill-orphans\n    family: chromium\n    when:\n      orphaned_for: 1s\n    action: kill-tree\n    grace: 1s\nstale_profiles:\n  roots: [{}]\n  older_than: 1s\n",
        roots.join(", ")
    );
    ns.write("policy.yaml", &text)
}

/// Make a directory look old (its mtime an hour ago).
fn age(dir: &Path) {
    let f = std::fs::File::open(dir).expect("open dir");
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
}

/// `cleanup ARGS` in the namespace, killed if it runs past `limit`: (exit code, JSON, took).
fn cleanup_bounded(
    ns: &Ns,
    pol: &Path,
    args: &[&str],
    limit: Duration,
) -> (i32, serde_json::Value, Duration) {
    let mut c = ns.cmd(bin("leakwarden"));
    c.args(["cleanup", "--format", "json", "--policy"])
        .arg(pol)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = c.spawn().expect("start cleanup");
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cleanup still running after {limit:?}: it blocked");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t.elapsed();
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (status.code().unwrap_or(-1), v, took)
}

fn stale_paths(report: &serde_json::Value) -> Vec<(String, String)> {
    arr(report, "stale_dirs")
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap_or_default().to_string(),
                d["result"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn hostile(case: &str, took: Duration, removed_wrongly: usize) {
    eprintln!("HOSTILE | {case} | cleanup took {took:.2?} | wrongly removed: {removed_wrongly}");
}

/// A FIFO named `.lock` and a listening socket with a full backlog inside stale-looking
/// directories: `cleanup` finishes in seconds (both count as in use: they cannot be checked or
/// someone listens), and `watch` keeps scanning — a new orphan is killed at once.
#[test]
fn a_fifo_lock_and_a_full_socket_neither_block_cleanup_nor_stop_watch() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let fifo_dir = ns.path("org.chromium.Chromium.fifo");
    std::fs::create_dir(&fifo_dir).expect("mkdir");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        fifo_dir.join(".lock"),
        rustix::fs::Mode::from_raw_mode(0o666),
    )
    .expect("mkfifo");
    age(&fifo_dir);
    let sock_dir = ns.path("org.chromium.Chromium.sock");
    std::fs::create_dir(&sock_dir).expect("mkdir");
    let listener = full_listener(&sock_dir.join("SingletonSocket"));
    age(&sock_dir);
    let pol = policy(&ns, &[]);
    let (code, report, took) = cleanup_bounded(&ns, &pol, &["--kill"], Duration::from_secs(20));
    assert!(
        code == 0 || code == 2 || code == 3,
        "exit {code}: {report:#}"
    );
    assert!(
        fifo_dir.join(".lock").exists() && sock_dir.exists(),
        "{report:#}"
    );
    hostile(
        "FIFO .lock + full-backlog SingletonSocket (cleanup)",
        took,
        0,
    );

    // watch with the same roots: a tree orphaned now is seen and killed promptly.
    let w = ns.watch(&[
        "--policy",
        pol.to_str().expect("utf8"),
        "--interval",
        "500ms",
    ]);
    std::thread::sleep(Duration::from_secs(2)); // a stale run over the hostile roots
    let mut tree = ns.fake_tree("prof-victim");
    let t = Instant::now();
    tree.orphan(&ns);
    wait_for(
        "the orphan to be killed while the hostile directories sit in the root",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || tree.tree.iter().all(|&p| !ns.alive(p)).then_some(()),
    );
    eprintln!("orphan killed {:?} after its launcher died", t.elapsed());
    let (code, _) = leakwarden_tests::sidecar::http_get(&w.addr, "/healthz").expect("healthz");
    assert_eq!(code, 200);
    drop(listener);
}

/// A unix socket listening with a backlog of 0, filled until a connect would block.
fn full_listener(path: &Path) -> Vec<std::os::fd::OwnedFd> {
    use rustix::net::{bind, connect, listen, socket_with, AddressFamily, SocketAddrUnix};
    use rustix::net::{SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(path).expect("addr");
    let l = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    bind(&l, &addr).expect("bind");
    listen(&l, 0).expect("listen");
    let mut keep = vec![l];
    for _ in 0..64 {
        let s = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        let full = connect(&s, &addr).is_err();
        keep.push(s);
        if full {
            break;
        }
    }
    keep
}

/// A stale-looking symlink pointing at a victim directory, and a stale-looking directory holding
/// a symlink to a victim file: the victims are untouched, the link is not followed.
#[test]
fn symlinks_in_the_root_are_never_followed() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let outside = tempdir();
    let victim = outside.path().join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    for i in 0..3 {
        std::fs::write(victim.join(format!("precious-{i}")), "data").expect("write");
    }
    symlink(&victim, ns.path("org.chromium.Chromium.evil")).expect("symlink");
    let stale = ns.path("org.chromium.Chromium.stale");
    std::fs::create_dir(&stale).expect("mkdir");
    symlink(victim.join("precious-0"), stale.join("link")).expect("symlink");
    symlink(&victim, stale.join("dirlink")).expect("symlink");
    age(&stale);
    let pol = policy(&ns, &[]);
    let (code, report, took) = cleanup_bounded(&ns, &pol, &["--kill"], Duration::from_secs(20));
    assert_eq!(code, 3, "{report:#}");
    assert!(!stale.exists(), "the real stale directory goes: {report:#}");
    let left = std::fs::read_dir(&victim).expect("victim").count();
    assert_eq!(left, 3, "the victim's files are all there");
    assert!(std::fs::symlink_metadata(ns.path("org.chromium.Chromium.evil")).is_ok());
    hostile(
        "symlinked stale-looking dir / links inside a stale dir",
        took,
        3 - left,
    );
}

/// A live browser (its launcher alive) whose profile is named through a symlinked parent — the
/// alias points at the root — and one started with a relative `--user-data-dir` from inside the
/// root: both profiles are in use, by identity, and keep every file.
#[test]
fn live_profiles_named_through_a_symlink_or_relatively_are_in_use() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let alias = tempdir();
    let alias_link = alias.path().join("ALIAS");
    symlink(ns.dir.path(), &alias_link).expect("symlink");
    let chromium = ns.fixture_link("chromium");
    let via_alias = alias_link.join("puppeteer_dev_chrome_profile-live");
    let a = ns.fixture(&[
        "launch",
        chromium.to_str().expect("utf8"),
        &format!("--user-data-dir={}", via_alias.display()),
    ]);
    let real = ns.path("puppeteer_dev_chrome_profile-live");
    // A relative profile, resolved through the browser's working directory (the root).
    let mut c = std::process::Command::new("nsenter");
    c.arg("--target")
        .arg(ns.init.to_string())
        .args(["--pid", "--mount"])
        .arg(format!("--wd={}", ns.dir.path().display()))
        .arg("--")
        .arg(bin("lw-fixture"))
        .args(["launch", chromium.to_str().expect("utf8")])
        .arg("--user-data-dir=puppeteer_dev_chrome_profile-rel")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut rel_launcher: Child = c.spawn().expect("launch relative");
    let rel = ns.path("puppeteer_dev_chrome_profile-rel");
    wait_for(
        "both profiles",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (real.is_dir() && rel.is_dir()).then_some(()),
    );
    for d in [&real, &rel] {
        for i in 0..3 {
            std::fs::write(d.join(format!("Cookies-{i}")), "session").expect("write");
        }
        age(d);
    }
    let pol = policy(&ns, &[]);
    let (_, report, took) = cleanup_bounded(&ns, &pol, &["--kill"], Duration::from_secs(20));
    let n = |d: &Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    assert!(
        n(&real) >= 3,
        "the live profile behind the alias lost files: {report:#}"
    );
    assert!(
        n(&rel) >= 3,
        "the relative live profile lost files: {report:#}"
    );
    assert!(stale_paths(&report).is_empty(), "{report:#}");
    hostile("live profile via symlinked parent / relative path", took, 0);
    drop(a);
    let _ = rel_launcher.kill();
    let _ = rel_launcher.wait();
}

/// A filesystem mounted inside a stale directory: the mount is neither walked nor emptied (the
/// removal is reported failed); its files survive.
#[test]
fn a_mount_inside_a_stale_directory_is_left_alone() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let stale = ns.path("org.chromium.Chromium.mnt");
    let mnt = stale.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    std::fs::write(stale.join("junk"), "x").expect("write");
    // Mounted in the namespace's own mount namespace only.
    let mut m = ns.cmd("mount");
    m.args(["-t", "tmpfs", "lw-test", mnt.to_str().expect("utf8")]);
    let out = m.output().expect("mount");
    assert!(out.status.success(), "mount: {out:?}");
    let mut w = ns.cmd("sh");
    w.args(["-c", &format!("echo data > {}/precious", mnt.display())]);
    assert!(w.status().expect("write").success());
    age(&stale);
    let pol = policy(&ns, &[]);
    let (code, report, took) = cleanup_bounded(&ns, &pol, &["--kill"], Duration::from_secs(20));
    assert_eq!(code, 1, "a failed removal is an error: {report:#}");
    let rows = stale_paths(&report);
    assert!(
        rows.iter()
            .any(|(p, r)| p.ends_with("org.chromium.Chromium.mnt") && r.contains("mount point")),
        "{report:#}"
    );
    let mut cat = ns.cmd("cat");
    cat.arg(mnt.join("precious"));
    let out = cat.output().expect("cat");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "data",
        "the mount's file survived"
    );
    hostile("mount inside a stale dir", took, 0);
}

/// A killed tree's profile goes with it when it lies inside a root — whatever its name — and
/// stays when it lies outside (a persistent profile is data): `cleanup --kill` in the same run,
/// `watch` right after its kill.
#[test]
fn a_killed_trees_profile_goes_with_it_inside_a_root_and_stays_outside() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let home = tempdir();
    let pol = policy(&ns, &[]);
    let mut inside = ns.fake_tree("ud-custom");
    let outside_profile = home.path().join("persistent-profile");
    let chromium = ns.fixture_link("chromium");
    let mut outside = ns.fixture(&[
        "launch",
        chromium.to_str().expect("utf8"),
        &format!("--user-data-dir={}", outside_profile.display()),
    ]);
    inside.orphan(&ns);
    ns.kill(outside.pids[0], libc::SIGKILL);
    let _ = outside.nsenter.wait();
    wait_for(
        "both trees orphaned",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (ns.ppid(outside.pids[1]) == Some(1)).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (code, report, took) = cleanup_bounded(&ns, &pol, &["--kill"], Duration::from_secs(30));
    assert_eq!(code, 3, "{report:#}");
    assert!(
        !ns.path("ud-custom").exists(),
        "the killed tree's profile in the root went with it: {report:#}"
    );
    assert!(
        outside_profile.is_dir(),
        "a profile outside the roots is data: {report:#}"
    );
    let rows = stale_paths(&report);
    assert!(
        rows.iter()
            .any(|(p, r)| p.ends_with("persistent-profile") && r.starts_with("kept")),
        "{report:#}"
    );
    hostile(
        "killed tree's profile inside / outside the roots (cleanup)",
        took,
        0,
    );

    // watch: the same, after its own kill.
    let w = ns.watch(&[
        "--policy",
        pol.to_str().expect("utf8"),
        "--interval",
        "300ms",
    ]);
    let mut t2 = ns.fake_tree("another-custom-name");
    t2.orphan(&ns);
    wait_for(
        "watch to kill the tree and remove its profile",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || (!ns.path("another-custom-name").exists()).then_some(()),
    );
    w.wait_metric(
        "leakwarden_stale_dirs_removed_total",
        &[("outcome", "removed")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
}

/// `stale_profiles.owners`: only directories owned by the uids the policy names are removed —
/// another user's look-alike in a shared /tmp stays.
#[test]
fn only_directories_of_the_allowed_owners_are_removed() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let mine = ns.path("org.chromium.Chromium.mine");
    let theirs = ns.path("org.chromium.Chromium.theirs");
    for d in [&mine, &theirs] {
        std::fs::create_dir(d).expect("mkdir");
        std::fs::write(d.join("f"), "x").expect("write");
    }
    std::os::unix::fs::chown(&theirs, Some(1234), Some(1234)).expect("chown");
    age(&mine);
    age(&theirs);
    let pol = ns.write(
        "policy.yaml",
        &format!(
            "families:\n{FAKE_CHROMIUM_FAMILY}stale_profiles:\n  roots: ['{}']\n  owners: [0]\n  older_than: 1s\n",
            ns.dir.path().display()
        ),
    );
    let (code, report, took) = cleanup_bounded(&ns, &pol, &["--kill"], Duration::from_secs(20));
    assert_eq!(code, 3, "{report:#}");
    assert!(!mine.exists(), "{report:#}");
    assert!(
        theirs.join("f").exists(),
        "another uid's directory was removed: {report:#}"
    );
    hostile("stale-looking dir of another uid (owners: [0])", took, 0);
}
