//! The fast form of `make bench-runner` (tests/bench/runner-vs-peers.sh): the runner alone runs the
//! bench job (tests/bench/runner-peers/job.yaml) on the bench site, 5 sessions at concurrency 1,
//! inside a private PID namespace, and nothing of the run may be left: no process in the
//! namespace's /proc once the runner has exited, no run or profile directory, no Chromium
//! temporary directory.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use leakwarden_tests::runner::run_with_deadline;
use leakwarden_tests::{bin, can_unshare, chromium, in_pid_namespace, workspace_root};

/// Namespace init (PID 1): run the runner, then list every other process still in the
/// namespace's /proc with shell builtins only (no child of its own to hide or confuse).
const INIT: &str = r#"dir="$1"; shift
"$@"; echo $? > "$dir/rc"
: > "$dir/left"
for p in /proc/[0-9]*; do
  [ "${p#/proc/}" = "$$" ] && continue
  read -r st < "$p/stat" 2>/dev/null && echo "$st" >> "$dir/left"
done
"#;

fn site_dir() -> PathBuf {
    workspace_root().join("tests/bench/runner-peers/site")
}

/// A tiny static file server for the bench site on 127.0.0.1 (the bench uses python3's
/// http.server inside each cell; the smoke test needs no Python).
fn serve_site() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr").to_string();
    let root = site_dir();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || serve_one(stream, &root));
        }
    });
    addr
}

fn serve_one(mut stream: TcpStream, root: &Path) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/");
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    let file = (!name.contains("..") && !name.contains('/'))
        .then(|| std::fs::read(root.join(name)).ok())
        .flatten();
    let (status, body) = match file {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", b"not found".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok();
    stream.write_all(&body).ok();
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn browser_bench_job_five_sessions_leave_nothing() {
    if !can_unshare() {
        eprintln!("SKIP: cannot create a PID namespace (needs root)");
        return;
    }
    let Some(chrome) = chromium() else {
        eprintln!("SKIP: chromium not installed");
        return;
    };
    let addr = serve_site();
    // Short paths: Chromium's unix sockets live under the run directory (the runner refuses a
    // run directory whose browser temp paths could exceed the socket path limit).
    let dir = tempfile::Builder::new()
        .prefix("lwb")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let d = dir.path();
    let (run, tmp, out) = (d.join("r"), d.join("t"), d.join("o"));
    for p in [&run, &tmp, &out] {
        std::fs::create_dir(p).expect("mkdir");
    }
    let job_src = workspace_root().join("tests/bench/runner-peers/job.yaml");
    let job = std::fs::read_to_string(&job_src)
        .expect("bench job")
        .replace("127.0.0.1:18631", &addr);
    let job_path = d.join("job.yaml");
    std::fs::write(&job_path, job).expect("write job");
    let summary_path = d.join("summary.json");

    let mut cmd = in_pid_namespace("sh");
    cmd.arg("-c").arg(INIT).arg("sh").arg(d);
    cmd.arg(bin("leakwarden-runner")).arg("run").arg(&job_path);
    cmd.args(["--sessions", "5", "--concurrency", "1"]);
    cmd.arg("--chromium").arg(&chrome);
    cmd.arg("--run-dir").arg(&run).arg("--artifacts").arg(&out);
    cmd.arg("--summary-json").arg(&summary_path);
    cmd.env("TMPDIR", &tmp).env("RUST_LOG", "info");
    cmd.stdin(Stdio::null());
    let output = cmd.output().expect("spawn unshare");
    let ctx = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let rc = std::fs::read_to_string(d.join("rc")).unwrap_or_default();
    assert_eq!(rc.trim(), "0", "runner exit code\n{ctx}");
    let left = std::fs::read_to_string(d.join("left")).expect("left list");
    assert!(
        left.trim().is_empty(),
        "processes left in the namespace after the runner exited:\n{left}\n{ctx}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_path).expect("summary json"))
            .expect("summary parses");
    assert_eq!(summary["sessions"]["ok"], 5, "sessions ok: {summary:#}");
    assert_eq!(summary["cleanup"]["leaks"], 0, "leaks: {summary:#}");
    // The runner's own CPU (issue 14: ≤ 15 ms per session on the bench): its process only,
    // not its browsers — so less than the wall time on every core, and more than nothing.
    let cpu = summary["runner_cpu_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("runner_cpu_seconds: {summary:#}"));
    let wall = summary["wall_seconds"].as_f64().expect("wall_seconds");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(
        cpu > 0.0 && cpu < wall * cores,
        "cpu {cpu} s, wall {wall} s: {summary:#}"
    );
    let pngs = entries(&out).iter().filter(|n| n.ends_with(".png")).count();
    assert_eq!(pngs, 5, "one PNG per session in {}", out.display());
    assert_eq!(entries(&run), Vec::<String>::new(), "run/profile dirs left");
    assert_eq!(entries(&tmp), Vec::<String>::new(), "TMPDIR entries left");
}

/// `cell.py` with the arguments of a runner cell on `port`, its "runner" /bin/true (were the
/// cell to go on, it would end at once, not hang), `wrap` in front (an `unshare` command line).
fn cell_command(wrap: &[&str], dir: &Path, port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new(wrap[0]);
    cmd.args(&wrap[1..])
        .arg("python3")
        .arg(workspace_root().join("tests/bench/runner-peers/cell.py"))
        .args(["--tool", "runner", "--mode", "clean", "--sessions", "1"])
        .args(["--concurrency", "1", "--port", &port.to_string()])
        .arg("--cell-dir")
        .arg(dir)
        .arg("--tmp")
        .arg(dir.join("tmp"))
        .arg("--site")
        .arg(site_dir())
        .arg("--peers")
        .arg(dir)
        .args(["--runner", "/bin/true"])
        .arg("--job")
        .arg(workspace_root().join("tests/bench/runner-peers/job.yaml"))
        .args(["--chromium", "/nonexistent/chromium"])
        .stdin(Stdio::null());
    cmd
}

const NAMESPACE_INIT: &[&str] = &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// A bench cell serves its site itself, inside its cgroup. A server left on the port by someone
/// else (it happened: a manual run's `http.server` held 18631 through a whole `make
/// bench-runner`) made the cell's own server fail to bind, and `cell.py` took the other's answer
/// for its own: the tools were served from outside the cell, that CPU uncounted. The cell now
/// refuses the port before it starts anything.
#[test]
fn a_bench_cell_refuses_a_port_another_process_serves() {
    if !can_unshare() {
        eprintln!("SKIP: needs root (PID namespaces)");
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = taken.local_addr().expect("local addr").port();
    // Answer connections, as a stray static server would.
    std::thread::spawn(move || for _ in taken.incoming() {});
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_with_deadline(
        &mut cell_command(NAMESPACE_INIT, dir.path(), port),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the cell ran on a taken port: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "127.0.0.1:{port} is already served by another process"
        )),
        "{stderr}"
    );
    assert!(
        !dir.path().join("tool.stdout").exists(),
        "the cell started its tool"
    );
}

/// A cell ends by SIGKILLing every process it can see: that is its clean-up as PID 1 of its own
/// namespace, and it killed this machine's processes when `cell.py` was once run outside one.
/// Not PID 1, it refuses before anything else. (Checked as PID 2 of a namespace, so that a
/// regression kills only the namespace's shell.)
#[test]
fn a_bench_cell_that_is_not_its_namespaces_init_refuses_to_run() {
    if !can_unshare() {
        eprintln!("SKIP: needs root (PID namespaces)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // `sh -c '"$@"; echo ...'`: the shell is PID 1 and stays; the cell is its child.
    let wrap = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        "\"$@\"; echo \"cell exited $?\"",
        "sh",
    ];
    let out = run_with_deadline(
        &mut cell_command(&wrap, dir.path(), 9),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("cell exited 1"),
        "the shell beside the cell was killed, or the cell did not refuse: {stdout} {stderr}"
    );
    assert!(
        stderr.contains("must run as PID 1 of its own PID namespace"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(dir.path())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "the cell wrote into its directory"
    );
}
