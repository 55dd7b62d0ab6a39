//! Per-session network and state options with real Chromium: for endpoint sessions (query
//! parameters of the endpoint URL, real puppeteer-core) and for jobs (the job file): a proxy
//! with credentials answered through Fetch.authRequired, blocked resource types, cookies loaded
//! at the start and saved at the end, downloads into the session's artifacts directory.
//! See: issue 13, item 3 ("Per-session network and state options").

use std::time::Duration;

use leakwarden_tests::proxy::AuthProxy;
use leakwarden_tests::runner::{prerequisites, test_dir};
use leakwarden_tests::serve::{
    clients_installed, http, node, request, run_client, stop_and_assert_nothing_left, ServeRun,
};

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn serve_session_options_block_state_downloads_and_an_authenticating_proxy_chromium() {
    if !(prerequisites() && clients_installed()) {
        return;
    }
    let dir = test_dir();
    let art = dir.path().join("art");
    let state = dir.path().join("state");
    let run = ServeRun::start_in(
        dir,
        &[
            "--artifacts",
            art.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let ws = run.ws_url();

    // Images blocked; a named state, empty at first; a download.
    let v = run_client(
        &mut node(
            "options.js",
            &[&format!("{ws}?block=image&state=acct"), &run.site(), "one"],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(v["imgWidth"], 0, "the image was blocked: {v}");
    assert_eq!(v["cookieAtStart"], "", "{v}");
    assert_eq!(v["title"], "Rows", "{v}");
    leakwarden_tests::wait_for(
        "the state saved",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            std::fs::read_to_string(state.join("acct.json"))
                .ok()
                .filter(|s| s.contains("\"one\""))
        },
    );
    // The same state again: the cookie is there at the start; no blocking this time.
    let v = run_client(
        &mut node(
            "options.js",
            &[&format!("{ws}?state=acct"), &run.site(), "two"],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(v["cookieAtStart"], "lw=one", "{v}");
    assert_eq!(v["imgWidth"], 1, "{v}");
    let files = files_under(&art);
    let downloads: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with("/report.txt"))
        .collect();
    assert_eq!(
        downloads.len(),
        2,
        "one download per session, each in its own directory: {files:?}"
    );
    assert!(
        downloads.iter().all(|f| f.contains("-downloads/")),
        "{files:?}"
    );

    // A proxy that wants credentials: the service answers its challenge; the client never sees it.
    let proxy = AuthProxy::start("bot", "s3cret");
    let q = format!(
        "proxy={}&proxy_username=bot&proxy_password=s3cret&proxy_bypass=%3C-loopback%3E",
        proxy.url()
    );
    let v = run_client(
        &mut node("options.js", &[&format!("{ws}?{q}"), &run.site(), "three"]),
        Duration::from_secs(60),
    );
    assert_eq!(v["rowsStatus"], 200, "{v}");
    assert_eq!(v["title"], "Rows", "{v}");
    let forwarded = proxy.forwarded.lock().unwrap().clone();
    assert!(
        forwarded.iter().any(|u| u.ends_with("/rows")),
        "the page came through the proxy: {forwarded:?}"
    );
    assert!(
        *proxy.challenged.lock().unwrap() >= 1,
        "the proxy challenged first"
    );

    // A job posted to the service starts from the same named state (once the second session
    // has saved it).
    leakwarden_tests::wait_for(
        "the second session's state saved",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            std::fs::read_to_string(state.join("acct.json"))
                .ok()
                .filter(|s| s.contains("\"two\""))
        },
    );
    let (code, body) = request(
        run.port,
        "POST",
        "/jobs",
        &[],
        b"sessions: 1\nretries: 0\nstate: acct\nsteps:\n  - navigate: /rows\n  - evaluate: document.cookie\n",
        Duration::from_secs(60),
    )
    .expect("answer");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["summary"]["records"][0]["values"][0]["value"], "lw=two",
        "{v:#}"
    );

    // Options are checked before anything starts.
    for bad in [
        "block=pictures",
        "proxy_username=u",
        "state=../etc",
        "colour=red",
    ] {
        let r = http(
            run.port,
            &format!("/devtools/browser?{bad}"),
            &[
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
        );
        assert_eq!(r.as_ref().map(|(c, _)| *c), Some(400), "{bad}: {r:?}");
    }
    stop_and_assert_nothing_left(run);
}

/// The same options in a job file, run by `leakwarden-runner run`: every session's context goes
/// through the authenticating proxy, images are blocked, the state's cookies are there at the
/// start, each session's cookies and downloads land beside its artifacts.
#[test]
fn runner_job_network_and_state_options_chromium() {
    if !prerequisites() {
        return;
    }
    let proxy = AuthProxy::start("bot", "s3cret");
    let dir = test_dir();
    let art = dir.path().join("art");
    let state = dir.path().join("seed.json");
    std::fs::write(
        &state,
        r#"{"cookies":[{"name":"seed","value":"s1","domain":"127.0.0.1","path":"/","expires":-1}],"origins":[]}"#,
    )
    .unwrap();
    let job = leakwarden_tests::runner::job_file(
        dir.path(),
        "job.yaml",
        &format!(
            r#"
name: net job
sessions: 2
concurrency: 1
retries: 0
artifacts: {art}
state: {state}
network:
  proxy: {proxy}
  proxy_username: bot
  proxy_password: s3cret
  proxy_bypass: "<-loopback>"
  block: [image]
steps:
  - navigate: /media
  - evaluate: "({{ cookie: document.cookie, img: document.getElementById('px').naturalWidth }})"
  - evaluate: "document.cookie = 'lw=job; max-age=3600; path=/'; const a = document.createElement('a'); a.href = '/download'; a.download = ''; document.body.appendChild(a); a.click(); true"
  - sleep: 1500ms
"#,
            art = art.display(),
            state = state.display(),
            proxy = proxy.url(),
        ),
    );
    let run = leakwarden_tests::runner::RunnerRun::start_in(dir, &[job.to_str().unwrap()]);
    let rc = run.wait_exit(Duration::from_secs(120));
    assert_eq!(rc, 0, "{}", run.logs());
    let s = run.summary();
    for r in s["records"].as_array().unwrap() {
        let v = &r["values"][0]["value"];
        assert_eq!(v["cookie"], "seed=s1", "{r:#}");
        assert_eq!(v["img"], 0, "images blocked: {r:#}");
    }
    let forwarded = proxy.forwarded.lock().unwrap().clone();
    assert!(
        forwarded.iter().filter(|u| u.ends_with("/media")).count() >= 2,
        "every session's page came through the proxy: {forwarded:?}"
    );
    let files = files_under(&art);
    let states: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with("-state.json"))
        .collect();
    assert_eq!(states.len(), 2, "{files:?}");
    for f in states {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.contains("\"lw\"") && text.contains("\"seed\""),
            "{text}"
        );
    }
    assert_eq!(
        files
            .iter()
            .filter(|f| f.ends_with("-downloads/report.txt"))
            .count(),
        2,
        "{files:?}"
    );
    leakwarden_tests::runner::assert_nothing_left(&run);
    run.finish();
}
