//! Issue 12, "ownership that matches how browsers are really run": the decoy zoo.
//!
//! Each test builds one real way a browser runs as a service — Chromium as the payload of the
//! real `tini` and the real `dumb-init` as PID 1 of a nested PID namespace (judged from inside the
//! container and from the node around it), a `containerd-shim` starting a browser, chromedriver
//! as a long-running service, a browser whose launcher is alive, an Electron-style app with its
//! own crash handler, msedge- and brave-named browsers — and, in the same setup, a real leftover
//! of the same kind (its launcher SIGKILLed, the browser reparented). The built-in default policy
//! (with `orphaned_for` lowered from 30 s to 1 s: stricter than shipped) must plan no kill for a
//! decoy, and `cleanup --kill` must end each leftover whole.
//!
//! Everything runs inside private PID namespaces (the "node" is one too), so the sidecar can
//! only ever see what the test started. Each test prints a `ZOO |` line (case, decoy planned,
//! leftover processes planned, killed) for BENCHMARKS.md's "Wrong kills and data loss" table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leakwarden_tests::sidecar::*;
use leakwarden_tests::wait_for;

/// A Chromium tree as the namespace shows it: every live Chromium process naming `profile` (its
/// network service shows as `exe`, started through /proc/self/exe).
fn tree_pids(ns: &Ns, profile: &Path) -> BTreeSet<i32> {
    let arg = format!("--user-data-dir={}", profile.display());
    ns.procs()
        .into_iter()
        .filter(|p| p.state != "Z" && p.cmdline.contains(&arg))
        .filter(|p| is_chromium_family(p) || p.comm == "exe")
        .map(|p| p.pid)
        .collect()
}

/// Wait until a browser started with `profile` runs with a renderer and two crashpad
/// handlers; its main process's PID in `ns`.
fn wait_browser(ns: &Ns, profile: &Path) -> i32 {
    let arg = format!("--user-data-dir={}", profile.display());
    let start = std::time::Instant::now();
    loop {
        if let Some(pid) = browser_ready(ns, &arg) {
            return pid;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!(
                "no Chromium with {arg} and a renderer within 60 s: {:#?}",
                ns.procs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn browser_ready(ns: &Ns, arg: &str) -> Option<i32> {
    {
        {
            let ps = ns.procs();
            let renderer = ps
                .iter()
                .any(|p| p.cmdline.contains(arg) && p.cmdline.contains("--type=renderer"));
            let handlers = ps
                .iter()
                .filter(|p| p.comm.starts_with("chrome_crashpad") && p.state != "Z")
                .count();
            let main = ps.iter().find(|p| {
                is_chromium_family(p)
                    && p.cmdline.contains(arg)
                    && !p.cmdline.contains("--type=")
                    && p.state != "Z"
            });
            (renderer && handlers >= 2)
                .then(|| main.map(|m| m.pid))
                .flatten()
        }
    }
}

/// `cleanup` (dry run) with the policy: the PIDs it would kill.
fn planned(ns: &Ns, pol: &Path) -> BTreeSet<i32> {
    let (code, out, err) = ns.cleanup(pol, &["--format", "json"]);
    assert!(code == 0 || code == 2, "cleanup exit {code}\n{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    arr(&v, "items")
        .iter()
        .filter(|i| i["action"] != "report")
        .flat_map(|i| arr(i, "pids").iter().filter_map(|p| p.as_i64()))
        .map(|p| p as i32)
        .collect()
}

/// `cleanup --kill`: its exit code and JSON report.
fn kill(ns: &Ns, pol: &Path) -> (i32, serde_json::Value) {
    let (code, out, err) = ns.cleanup(pol, &["--kill", "--format", "json"]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, v)
}

/// The scan's tree whose profile directory is `profile`.
fn tree_of<'a>(scan: &'a serde_json::Value, profile: &Path) -> &'a serde_json::Value {
    let p = profile.display().to_string();
    arr(scan, "trees")
        .iter()
        .find(|t| t["profile_dir"].as_str() == Some(&p))
        .unwrap_or_else(|| panic!("no tree for {p} in {scan:#}"))
}

fn zoo(case: &str, decoy_planned: usize, leftover_planned: usize, killed: usize) {
    eprintln!("ZOO | {case} | decoy processes planned: {decoy_planned} | leftover processes planned: {leftover_planned} | killed: {killed}");
}

fn chrome() -> Option<PathBuf> {
    if skip_without_unshare() {
        return None;
    }
    let c = leakwarden_tests::chromium();
    if c.is_none() {
        eprintln!("SKIP: chromium not installed");
    }
    c
}

/// Chromium as the payload of a real init, as PID 1 of a container nested in a node; a leftover
/// adopted by the same init. Judged from the container and from the node; killed from the node.
fn init_payload_and_leftover(init: &str, init_args: &[&str], case: &str) {
    let Some(chrome) = chrome() else { return };
    if !Path::new(init).exists() {
        panic!("{init} not installed (make deps installs it)");
    }
    let node = Ns::new();
    let init_args: Vec<String> = init_args.iter().map(|s| s.to_string()).collect();
    let chrome_path = chrome.clone();
    let container = node.nested(init, move |dir| {
        let mut a = init_args;
        a.push(chrome_path.display().to_string());
        a.extend(chromium_flags(&dir.join("payload")));
        a
    });
    let payload_dir = container.path("payload");
    let payload_main = wait_browser(&container, &payload_dir);
    assert_eq!(
        container.ppid(payload_main),
        Some(1),
        "the init's own child: {:#?}",
        container.procs()
    );
    let mut leftover = container.start_chromium(&chrome, "leftover");
    leftover.orphan(&container);
    std::thread::sleep(Duration::from_millis(1500)); // past orphaned_for: 1s
    let payload = tree_pids(&container, &payload_dir);
    let left = tree_pids(&container, &leftover.profile);

    // Inside the container.
    let pol = default_policy_for_test(&container, "1s");
    let scan = container.scan(&pol);
    let t = tree_of(&scan, &payload_dir);
    assert_eq!(t["orphaned"], false, "{t:#}");
    assert_eq!(t["why"], "payload", "{t:#}");
    let t = tree_of(&scan, &leftover.profile);
    assert_eq!(t["orphaned"], true, "{t:#}");
    assert_eq!(t["why"], "adopted_by_init", "{t:#}");
    let plan = planned(&container, &pol);
    assert!(
        plan.is_disjoint(&payload),
        "the payload is planned for a kill: {plan:?} ∩ {payload:?}"
    );
    assert!(
        left.is_subset(&plan),
        "the leftover {left:?} is not all planned: {plan:?}"
    );

    // From the node around it: the same judgement under other PIDs.
    let npol = default_policy_for_test(&node, "1s");
    let scan = node.scan(&npol);
    assert_eq!(tree_of(&scan, &payload_dir)["why"], "payload", "{scan:#}");
    assert_eq!(
        tree_of(&scan, &leftover.profile)["orphaned"],
        true,
        "{scan:#}"
    );
    let node_plan = planned(&node, &npol);
    let node_payload = member_pids(tree_of(&scan, &payload_dir));
    assert!(
        node_payload.iter().all(|p| !node_plan.contains(p)),
        "node view plans the payload: {node_plan:?} ∩ {node_payload:?}"
    );
    let (code, report) = kill(&node, &npol);
    assert_eq!(code, 3, "{report:#}");
    wait_for(
        "the leftover to be gone",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || left.iter().all(|&p| !container.alive(p)).then_some(()),
    );
    for p in &payload {
        assert!(container.alive(*p), "payload process {p} was killed");
    }
    let (code, out, _) = container.cleanup(&pol, &[]);
    assert_eq!(code, 0, "nothing left to do in the container:\n{out}");
    zoo(case, 0, left.len(), left.len());
}

#[test]
fn chromium_as_tini_payload_is_owned_in_container_and_node_view_and_an_adopted_leftover_is_killed()
{
    init_payload_and_leftover(TINI, &["--"], "tini payload (container + node view)");
}

#[test]
fn chromium_as_dumb_init_payload_is_owned_in_container_and_node_view_and_an_adopted_leftover_is_killed(
) {
    init_payload_and_leftover(
        DUMB_INIT,
        &["--"],
        "dumb-init payload (container + node view)",
    );
}

/// A process named `containerd-shim` (a subreaper, its children in new sessions, as runc
/// makes them) runs a browser as a container's main process, and a shell that launches one and
/// is SIGKILLed: the browser left behind has lost its session leader.
#[test]
fn a_containerd_shim_child_browser_is_owned_and_the_leftover_of_its_dead_shell_is_killed() {
    let Some(chrome) = chrome() else { return };
    let ns = Ns::new();
    let shim = ns.fixture_link("containerd-shim");
    let payload_dir = ns.path("payload");
    let leftover_dir = ns.path("leftover");
    let launcher = format!(
        "{} {} & wait",
        chrome.display(),
        chromium_flags(&leftover_dir).join(" ")
    );
    let mut args: Vec<String> = vec!["supervise".into(), "--subreaper".into(), "--setsid".into()];
    args.push(chrome.display().to_string());
    args.extend(chromium_flags(&payload_dir));
    args.extend(["--".into(), "sh".into(), "-c".into(), launcher]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = ns.fixture_prog(&shim, &argv);
    let (shim_pid, sh) = (f.pids[0], f.pids[2]);
    wait_browser(&ns, &payload_dir);
    let leftover_main = wait_browser(&ns, &leftover_dir);
    ns.kill(sh, libc::SIGKILL);
    wait_for(
        "the leftover to be adopted by the shim",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (ns.ppid(leftover_main) == Some(shim_pid)).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let payload = tree_pids(&ns, &payload_dir);
    let left = tree_pids(&ns, &leftover_dir);
    let pol = default_policy_for_test(&ns, "1s");
    let scan = ns.scan(&pol);
    assert_eq!(
        tree_of(&scan, &payload_dir)["why"],
        "container_process",
        "{scan:#}"
    );
    assert_eq!(
        tree_of(&scan, &leftover_dir)["why"],
        "leader_gone",
        "{scan:#}"
    );
    let plan = planned(&ns, &pol);
    assert!(plan.is_disjoint(&payload), "{plan:?} ∩ {payload:?}");
    assert!(left.is_subset(&plan), "{left:?} ⊄ {plan:?}");
    let (code, report) = kill(&ns, &pol);
    assert_eq!(code, 3, "{report:#}");
    wait_for(
        "the leftover to be gone",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || left.iter().all(|&p| !ns.alive(p)).then_some(()),
    );
    assert!(
        payload.iter().all(|&p| ns.alive(p)),
        "the container's browser was killed"
    );
    zoo(
        "containerd-shim child (node view)",
        0,
        left.len(),
        left.len(),
    );
}

/// POST a W3C new-session request to chromedriver (with curl, as a Selenium client would over
/// HTTP); the session id.
fn new_session(port: u16, chrome: &Path) -> String {
    let flags: Vec<String> = chromium_flags(Path::new("/unused"))
        .into_iter()
        .filter(|f| !f.starts_with("--user-data-dir") && f != "about:blank")
        .collect();
    let body = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": chrome.display().to_string(), "args": flags}}}})
    .to_string();
    let url = format!("http://127.0.0.1:{port}/session");
    wait_for(
        "chromedriver to answer a new session",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let out = std::process::Command::new("curl")
                .args([
                    "-fs",
                    "-m",
                    "50",
                    "-XPOST",
                    &url,
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    &body,
                ])
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["value"]["sessionId"].as_str().map(str::to_string)
        },
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// chromedriver as a long-running service: the main process of a unit under a supervisor (a
/// process named `systemd` as PID 1 that starts it in a session of its own and reaps); beside
/// it a chromedriver whose launching shell was SIGKILLed, adopted by the same PID 1. Each has a
/// W3C session with its browser.
#[test]
fn chromedriver_as_a_service_is_owned_and_an_adopted_driver_browser_is_killed_whole() {
    let Some(chrome) = chrome() else { return };
    if !Path::new("/usr/bin/chromedriver").exists() {
        panic!("chromedriver not installed (make deps installs it)");
    }
    let links = tempdir();
    let systemd = links.path().join("systemd");
    std::os::unix::fs::symlink(leakwarden_tests::bin("lw-fixture"), &systemd).expect("link");
    let (p1, p2) = (free_port(), free_port());
    let ns = Ns::with_init(&systemd, move |_| {
        vec![
            "supervise".into(),
            "--setsid".into(),
            "/usr/bin/chromedriver".into(),
            format!("--port={p1}"),
        ]
    });
    new_session(p1, &chrome);
    let mut c = ns.cmd("sh");
    c.args(["-c", &format!("/usr/bin/chromedriver --port={p2} & wait")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut launcher = c.spawn().expect("start the launcher");
    new_session(p2, &chrome);
    let drivers = || -> Vec<NsProc> {
        ns.procs()
            .into_iter()
            .filter(|p| p.comm == "chromedriver" && p.state != "Z")
            .collect()
    };
    let service = drivers()
        .into_iter()
        .find(|p| p.cmdline.contains(&format!("--port={p1}")))
        .expect("service driver")
        .pid;
    let stray = drivers()
        .into_iter()
        .find(|p| p.cmdline.contains(&format!("--port={p2}")))
        .expect("launched driver")
        .pid;
    let sh = ns.ppid(stray).expect("its shell");
    ns.kill(sh, libc::SIGKILL);
    let _ = launcher.wait();
    wait_for(
        "the driver to be adopted by PID 1",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (ns.ppid(stray) == Some(1)).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let pol = default_policy_for_test(&ns, "1s");
    let scan = ns.scan(&pol);
    let by_root = |pid: i32| {
        arr(&scan, "trees")
            .iter()
            .find(|t| t["root_pid"] == pid)
            .cloned()
            .unwrap_or_else(|| panic!("no tree rooted at {pid}: {scan:#}"))
    };
    let svc_tree = by_root(service);
    let stray_tree = by_root(stray);
    assert_eq!(svc_tree["why"], "unit_main_process", "{svc_tree:#}");
    assert_eq!(stray_tree["why"], "adopted_by_supervisor", "{stray_tree:#}");
    let svc: BTreeSet<i32> = member_pids(&svc_tree).into_iter().collect();
    let left: BTreeSet<i32> = member_pids(&stray_tree).into_iter().collect();
    assert!(
        svc.len() >= 4 && left.len() >= 4,
        "driver + browser trees: {svc:?} {left:?}"
    );
    let plan = planned(&ns, &pol);
    assert!(plan.is_disjoint(&svc), "{plan:?} ∩ {svc:?}");
    assert!(left.is_subset(&plan), "{left:?} ⊄ {plan:?}");
    let (code, report) = kill(&ns, &pol);
    assert_eq!(code, 3, "{report:#}");
    wait_for(
        "the adopted driver's tree to be gone",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || left.iter().all(|&p| !ns.alive(p)).then_some(()),
    );
    assert!(
        svc.iter().all(|&p| ns.alive(p)),
        "the service's tree was touched"
    );
    zoo(
        "chromedriver service under a supervisor",
        0,
        left.len(),
        left.len(),
    );
}

/// An Electron-style app with its own crash handler (the real `chrome_crashpad_handler`, its
/// client socket held by the app): owned while the app lives. A handler that lingers after its
/// app died (a fake one: the real handler exits with its client) is orphaned and killed.
#[test]
fn an_apps_own_crashpad_handler_is_owned_and_one_whose_app_died_is_killed() {
    if skip_without_unshare() {
        return;
    }
    let handler = "/usr/lib/chromium/chrome_crashpad_handler";
    if !Path::new(handler).exists() {
        eprintln!("SKIP: {handler} not installed");
        return;
    }
    let ns = Ns::new();
    let db = ns.path("crash-db");
    let app = ns.fixture(&[
        "crashpad-client",
        handler,
        &format!("--database={}", db.display()),
        "--no-periodic-tasks",
    ]);
    let real_handler = app.pids[1];
    let fake = ns.fixture_link("chrome_crashpad_handler");
    let dead_app = ns.fixture(&[
        "crashpad-client",
        fake.to_str().expect("utf8"),
        "--marker=linger",
    ]);
    let lingering = dead_app.pids[1];
    ns.kill(dead_app.pids[0], libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(ns.alive(real_handler) && ns.alive(lingering));
    let pol = default_policy_for_test(&ns, "1s");
    let scan = ns.scan(&pol);
    let by_root = |pid: i32| {
        arr(&scan, "trees")
            .iter()
            .find(|t| t["root_pid"] == pid)
            .cloned()
            .unwrap_or_else(|| panic!("no tree rooted at {pid}: {scan:#}"))
    };
    assert_eq!(by_root(real_handler)["why"], "crashpad_client_alive");
    assert_eq!(by_root(lingering)["why"], "crashpad_client_gone");
    let plan = planned(&ns, &pol);
    assert!(
        !plan.contains(&real_handler),
        "the app's handler is planned: {plan:?}"
    );
    assert!(plan.contains(&lingering), "{plan:?}");
    let (code, report) = kill(&ns, &pol);
    assert_eq!(code, 3, "{report:#}");
    wait_for(
        "the lingering handler to be gone",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!ns.alive(lingering)).then_some(()),
    );
    assert!(ns.alive(real_handler), "the app's handler was killed");
    zoo("Electron-style app's crashpad handler", 0, 1, 1);
}

/// Browsers named `msedge` and `brave` (fake trees, as the names are what matters): the one
/// whose launcher is alive is owned — however long it has run — and the one whose launcher was
/// SIGKILLed is killed whole.
#[test]
fn msedge_and_brave_named_browsers_are_judged_like_chromium() {
    if skip_without_unshare() {
        return;
    }
    let ns = Ns::new();
    let launch = |name: &str, profile: &str| {
        let link = ns.fixture_link(name);
        ns.fixture(&[
            "launch",
            link.to_str().expect("utf8"),
            &format!("--user-data-dir={}", ns.path(profile).display()),
        ])
    };
    let edge = launch("msedge", "edge-profile");
    let brave = launch("brave", "brave-profile");
    let edge_tree: BTreeSet<i32> = edge.pids[1..].iter().copied().collect();
    let brave_tree: BTreeSet<i32> = brave.pids[1..].iter().copied().collect();
    ns.kill(brave.pids[0], libc::SIGKILL);
    wait_for(
        "the brave browser to be adopted",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (ns.ppid(brave.pids[1]) == Some(1)).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let pol = default_policy_for_test(&ns, "1s");
    let scan = ns.scan(&pol);
    let fam = family(&scan, "chromium").expect("chromium family");
    assert_eq!(
        fam["processes"], 8,
        "msedge and brave count as chromium: {fam:#}"
    );
    let plan = planned(&ns, &pol);
    assert!(plan.is_disjoint(&edge_tree), "{plan:?} ∩ {edge_tree:?}");
    assert!(brave_tree.is_subset(&plan), "{brave_tree:?} ⊄ {plan:?}");
    let (code, report) = kill(&ns, &pol);
    assert_eq!(code, 3, "{report:#}");
    wait_for(
        "the brave tree to be gone",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || brave_tree.iter().all(|&p| !ns.alive(p)).then_some(()),
    );
    assert!(edge_tree.iter().all(|&p| ns.alive(p)));
    zoo(
        "msedge (launcher alive) / brave (leftover)",
        0,
        brave_tree.len(),
        brave_tree.len(),
    );
}
