//! Helpers for the operations tests (`ops_*.rs`, `e2e_stack.rs`): external tools that must be
//! installed (promtool, prometheus, alertmanager — `make test` installs them, so a missing one
//! is a failure with a clear message, never a silent pass), daemons that are killed by PID when
//! the test ends, a minimal HTTP/1.1 client for loopback APIs, and the PromQL / exposition-format
//! plumbing that checks metric names used by dashboards and alerts against the programs' own
//! `/metrics`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{wait_for, workspace_root};

// === tools ===

/// Absolute path of an external tool on `PATH`. Panics, naming the installer, if it is missing:
/// `make test` runs `scripts/install-deps.sh` first, so a missing tool is a broken setup.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: run ./scripts/install-deps.sh (`make test` does); \
                 these tests need it and do not skip"
            )
        })
}

/// `target/tools/venv/bin/<name>`, installed by `scripts/install-deps.sh`.
pub fn venv_tool(name: &str) -> PathBuf {
    let p = workspace_root().join("target/tools/venv/bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run ./scripts/install-deps.sh (`make test` does)",
        p.display()
    );
    p
}

/// kubectl (for `kubectl kustomize`): the machine's, or the one `scripts/install-deps.sh` put in
/// the tools' venv where the machine has none.
pub fn kubectl() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| venv_tool("kubectl"))
}

/// The objects `kubectl kustomize DIR` renders (it runs kustomize's own code: components,
/// patches, transformers exactly as `kubectl apply -k` would apply them). Panics with the error.
pub fn kustomize(dir: &Path) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(kubectl());
    cmd.arg("kustomize").arg(dir);
    let out = crate::run(&mut cmd);
    assert!(out.status.success(), "{}", crate::describe(&cmd, &out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("\n---\n")
        .map(|doc| {
            serde_norway::from_str::<serde_json::Value>(doc)
                .unwrap_or_else(|e| panic!("kustomize {}: {e}\n{doc}", dir.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Files in `dir` whose names end with `suffix`, sorted.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// The rule files under `alerts/`.
pub fn rule_files() -> Vec<PathBuf> {
    files_ending(&workspace_root().join("alerts"), ".rules.yaml")
}

/// Parse a YAML file into a JSON value (keys are strings in everything we parse).
pub fn read_yaml(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule (recording and alerting) of every group in a rules document (`groups:` at the top).
pub fn rules_of(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Names recorded by the recording rules under `alerts/`.
pub fn recorded_names() -> BTreeSet<String> {
    rule_files()
        .iter()
        .flat_map(|f| rules_of(&read_yaml(f)))
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

// === ports and daemons ===

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A background process started by a test, with stdout and stderr in a log file. Dropping it
/// kills it by its PID (`Child::kill`) and reaps it: a test never leaves one behind, and never
/// signals anything it did not start.
pub struct Daemon {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Daemon {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The tail is what explains a failure.
        let start = text.len().saturating_sub(8000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!(
            "--- {} log ({}) ---\n{}",
            self.name,
            self.log.display(),
            &text[start..]
        )
    }

    /// `Some(status)` if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Panic with the log if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited early ({status})\n{}", self.name, self.log());
        }
    }

    /// Wait up to `deadline` for it to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// === HTTP ===

/// An HTTP response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// A minimal HTTP/1.1 GET over loopback (`Connection: close`; chunked bodies decoded). Enough for
/// Prometheus, Alertmanager and our own `/metrics`; no dependency on an HTTP client crate.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<Response> {
    let sock = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("resolve {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read response of {addr}{path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()
        .context("bad status")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&b[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

/// Percent-encode a query-string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// GET and parse a JSON body, whatever the status (Prometheus puts errors in the body).
pub fn get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let r = http_get(addr, path)?;
    serde_json::from_str(&r.body)
        .with_context(|| format!("GET {path}: status {}, not JSON: {}", r.status, r.body))
}

/// Poll `GET addr path` until it answers 200, panicking with `daemon`'s log after `deadline`.
pub fn wait_http_ok(daemon: &mut Daemon, addr: &str, path: &str, deadline: Duration) {
    let what = format!("{} to answer 200 on http://{addr}{path}", daemon.name);
    let start = std::time::Instant::now();
    loop {
        daemon.assert_running();
        if matches!(http_get(addr, path), Ok(r) if r.status == 200) {
            return;
        }
        if start.elapsed() > deadline {
            panic!(
                "timed out after {deadline:?} waiting for {what}\n{}",
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// === Prometheus ===

/// A real Prometheus (the Debian package's binary) on 127.0.0.1, with its storage in `dir`.
pub struct Prometheus {
    pub addr: String,
    pub daemon: Daemon,
}

impl Prometheus {
    /// Start Prometheus with `config` (YAML text) written to `dir/prometheus.yml`, and wait (poll,
    /// bounded) until `/-/ready` says so.
    pub fn start(dir: &Path, config: &str) -> Prometheus {
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(tool("prometheus"));
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut daemon = Daemon::spawn("prometheus", &mut cmd, dir);
        wait_http_ok(&mut daemon, &addr, "/-/ready", Duration::from_secs(60));
        Prometheus { addr, daemon }
    }

    /// `/api/v1/query` for `expr`; the whole JSON answer (status, data or errorType/error).
    pub fn query(&self, expr: &str) -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        get_json(&self.addr, &path).unwrap_or_else(|e| {
            panic!("query {expr:?}: {e:#}\n{}", self.daemon.log());
        })
    }

    /// The instant vector of `expr` as (labels, value) pairs; panics on a query error.
    pub fn vector(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let v = self.query(expr);
        assert_eq!(v["status"], "success", "query {expr:?} failed: {v}");
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The sum of the instant vector of `expr` (None when empty).
    pub fn scalar(&self, expr: &str) -> Option<f64> {
        let v = self.vector(expr);
        if v.is_empty() {
            None
        } else {
            Some(v.iter().map(|(_, x)| x).sum())
        }
    }
}

// === metric names ===

/// Metric names present in a Prometheus text exposition: every sample's name and every
/// `# TYPE`/`# HELP` name (so a histogram's base name counts next to `_bucket`, `_sum`, `_count`).
pub fn exposition_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            if let Some(n) = rest.split_whitespace().next() {
                names.insert(n.to_owned());
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The names in a PromQL expression that this project is responsible for: `leakwarden_*` and
/// `process_*` metrics and recording-rule names (`level:metric:operations`, the only identifiers
/// with colons). String literals are removed first, so label values never count; label names,
/// functions, keywords and other exporters' metrics (`up`, `kube_pod_info`) are not ours.
pub fn promql_names(expr: &str) -> BTreeSet<String> {
    let mut stripped = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                stripped.push(' ');
            }
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                stripped.push(' ');
            }
            None => stripped.push(c),
        }
    }
    let ident = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").expect("regex");
    ident
        .find_iter(&stripped)
        .map(|m| m.as_str())
        .filter(|t| {
            t.starts_with("leakwarden_")
                || t.starts_with("process_")
                || (t.contains(':') && t.starts_with(|c: char| c.is_ascii_alphabetic()))
        })
        .map(str::to_owned)
        .collect()
}

/// Replace Grafana's template variables with values Prometheus accepts.
pub fn substitute_grafana_vars(expr: &str) -> String {
    let mut s = expr.to_owned();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval_ms", "60000"),
        ("$__interval", "1m"),
        ("$__range_s", "3600"),
        ("$__range_ms", "3600000"),
        ("$__range", "1h"),
    ] {
        s = s.replace(var, value);
    }
    // Every other variable is a label filter (`$namespace`, `${pod}`): match anything.
    let var = regex::Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?").expect("regex");
    var.replace_all(&s, ".*").into_owned()
}

// === the programs' own /metrics ===

/// Runs the sidecar (`leakwarden watch --dry-run`, orphans judged after 2 s), the runner
/// (`leakwarden-runner run`, two sessions, one abandoned) and the runner's service
/// (`leakwarden-runner serve`, no warm browsers) side by side in one private PID namespace, so that per-family series, an orphan and a (dry-run) kill decision exist; scrapes
/// both and returns the union of their metric names, plus both raw expositions for messages.
/// Nothing is killed (`--dry-run`), and the namespace dies with the test's `unshare` process.
pub fn scrape_programs(dir: &Path) -> (BTreeSet<String>, String) {
    let sidecar_addr = format!("127.0.0.1:{}", free_port());
    let runner_addr = format!("127.0.0.1:{}", free_port());
    let serve_addr = format!("127.0.0.1:{}", free_port());
    let policy = dir.join("policy.yaml");
    // Stale-profile roots are the test's own directory: in a PID namespace the sidecar cannot
    // see browsers outside it, so on a shared /tmp their live directories would look stale.
    std::fs::write(
        &policy,
        format!(
            "rules:\n  - name: orphaned-browser-tree\n    when: {{ orphaned_for: 2s }}\n    action: kill-tree\n\
             stale_profiles:\n  roots: [{}]\n  remove: false\n",
            dir.display()
        ),
    )
    .expect("write policy");
    let script = format!(
        "{sidecar} watch --policy {policy} --listen {sidecar_addr} --interval 1s --dry-run & \
         {runner} serve --listen {serve_addr} --warm 0 --max-sessions 1 & \
         {runner} run --sessions 2 --concurrency 1 --fault abandon:0.5 --listen {runner_addr}; \
         wait",
        sidecar = crate::bin("leakwarden").display(),
        runner = crate::bin("leakwarden-runner").display(),
        policy = policy.display(),
    );
    let mut cmd = crate::in_pid_namespace("sh");
    cmd.arg("-c").arg(script).env("TMPDIR", dir);
    let mut d = Daemon::spawn("sidecar+runner", &mut cmd, dir);
    let scrape = |addr: &str| {
        http_get(addr, "/metrics")
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
    };
    // The runner exits after its two sessions (a few seconds): scrape it first and often, and
    // keep its last scrape. Waiting for the sidecar first once let the runner run and exit
    // before its first scrape (a loaded fresh clone's `make test`: 120 s with no runner scrape).
    let mut runner =
        crate::try_wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
            d.assert_running();
            scrape(&runner_addr)
        })
        .unwrap_or_else(|| panic!("the runner's /metrics never answered\n{}", d.log()));
    wait_http_ok(&mut d, &sidecar_addr, "/metrics", Duration::from_secs(30));
    // The sidecar then sees the abandoned browser orphaned and decides (dry-run) to kill it.
    let mut last_sidecar = String::new();
    let deadline = Duration::from_secs(120);
    let sidecar = crate::try_wait_for(deadline, Duration::from_millis(500), || {
        d.assert_running();
        if let Some(r) = scrape(&runner_addr) {
            runner = r;
        }
        last_sidecar = scrape(&sidecar_addr)?;
        (runner.contains("leakwarden_runner_sessions_total{")
            && last_sidecar.contains("leakwarden_kills_total{"))
        .then(|| last_sidecar.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out after {deadline:?} waiting for the runner's sessions and a dry-run kill \
             decision in the sidecar's /metrics: runner's sessions scraped: {}, sidecar's kill \
             decision: {}\n--- sidecar's last /metrics (orphans, kills) ---\n{}\n{}",
            runner.contains("leakwarden_runner_sessions_total{"),
            last_sidecar.contains("leakwarden_kills_total{"),
            last_sidecar
                .lines()
                .filter(|l| l.contains("orphan") || l.contains("kills") || l.contains("trees"))
                .collect::<Vec<_>>()
                .join("\n"),
            d.log()
        )
    });
    let service = wait_for(
        "the runner service's /metrics",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || scrape(&serve_addr),
    );
    let mut names = exposition_names(&sidecar);
    names.extend(exposition_names(&runner));
    names.extend(exposition_names(&service));
    (
        names,
        format!("--- sidecar /metrics ---\n{sidecar}\n--- runner /metrics ---\n{runner}\n--- runner service /metrics ---\n{service}"),
    )
}
