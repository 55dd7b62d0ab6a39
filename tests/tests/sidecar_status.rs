//! Issue 15: the status page at `/`, for hosts without Grafana — checked in real headless
//! Chromium. A namespace holds an orphaned tree and a process whose name is markup
//! (`<script>alert(1`): the page must list the tree with its verdict and show the hostile name as
//! text, never as markup; `/api/v1/status` carries the same data.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use leakwarden_tests::sidecar::*;
use leakwarden_tests::{describe, run, wait_for};

/// Chromium headless on the host, loading `url`: `--dump-dom` (the DOM after load) or a
/// screenshot into `png`.
fn chromium(chrome: &Path, dir: &Path, url: &str, png: Option<&Path>) -> String {
    let mut c = Command::new(chrome);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
    ])
    .arg(format!(
        "--user-data-dir={}",
        dir.join("chrome-profile").display()
    ))
    .env("TMPDIR", dir)
    .env("HOME", dir)
    .stdin(Stdio::null());
    match png {
        Some(p) => c.arg(format!("--screenshot={}", p.display())),
        None => c.arg("--dump-dom"),
    };
    c.arg(url);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", describe(&c, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_page_in_chromium_lists_the_orphaned_tree_and_shows_a_hostile_comm_as_text() {
    if skip_without_unshare() {
        return;
    }
    let Some(chrome) = leakwarden_tests::chromium() else {
        eprintln!("SKIP: chromium not installed");
        return;
    };
    let ns = Ns::new();
    let pol = ns.write(
        "policy.yaml",
        &format!(
            "dry_run: true\nfamilies:\n{FAKE_CHROMIUM_FAMILY}  - name: oddball\n    match:\n      - comm: '^<script>'\nrules:\n  - name: orphaned-browser-tree\n    family: chromium\n    when:\n      orphaned_for: 1s\n    action: kill-tree\n{}",
            stale_roots(ns.dir.path())
        ),
    );
    let mut tree = ns.fake_tree("prof-status-page");
    tree.orphan(&ns);
    let odd = ns.fixture(&["rename", "<script>alert(1)</script>"]);
    let w = ns.watch(&[
        "--policy",
        pol.to_str().expect("utf8"),
        "--interval",
        "300ms",
    ]);
    // Until the page shows both, with the orphan's rule decided (dry-run).
    let status = wait_for(
        "the status JSON with the orphaned tree and the odd process",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (code, body) = http_get(&w.addr, "/api/v1/status").ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let trees = arr(&v["scan"], "trees");
            let orphan = trees.iter().any(|t| {
                t["orphaned"] == true
                    && t["profile_dir"]
                        .as_str()
                        .is_some_and(|p| p.ends_with("prof-status-page"))
            });
            let odd = trees.iter().any(|t| t["root_pid"] == odd.pid());
            let decided = !arr(&v, "recent_kills").is_empty();
            (code == 200 && orphan && odd && decided).then_some(v)
        },
    );
    assert_eq!(status["policy"]["dry_run"], true);
    assert!(arr(&status, "recent_kills")
        .iter()
        .all(|k| k["outcome"] == "dry_run"));

    let url = format!("http://{}/", w.addr);
    let dom = chromium(&chrome, ns.dir.path(), &url, None);
    assert!(dom.contains("prof-status-page"), "the tree's row: {dom}");
    assert!(dom.contains("ORPHANED"), "its verdict: {dom}");
    assert!(dom.contains("DRY RUN"), "the dry-run banner: {dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(1"),
        "the hostile comm shown as text: {dom}"
    );
    assert!(
        !dom.to_ascii_lowercase().contains("<script"),
        "a script element made it into the DOM: {dom}"
    );
    let png = leakwarden_tests::workspace_root().join("target/status-page.png");
    let _ = std::fs::create_dir_all(png.parent().expect("parent"));
    chromium(&chrome, ns.dir.path(), &url, Some(&png));
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a screenshot of the page ({size} bytes at {})",
        png.display()
    );
    eprintln!("status page screenshot: {}", png.display());

    // The response itself: escaped, no framing, no sniffing, no script allowed.
    let (code, body) = http_get(&w.addr, "/").expect("GET /");
    assert_eq!(code, 200);
    assert!(body.contains("&lt;script&gt;alert(1") && !body.contains("<script"));
    drop(odd);
}
