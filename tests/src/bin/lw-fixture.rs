//! `lw-fixture`: processes that misbehave on purpose, for the end-to-end tests.
//!
//! Called as `lw-fixture MODE …` it runs one mode; called through a symlink with any other name
//! (tests link it as `<tmpdir>/chromium`, so its comm is `chromium`) it is a fake browser.
//! Every mode prints one line `ready <pid> …` on stdout once it is set up, then sleeps until
//! killed (unless said otherwise). Every mode accepts `--marker=STRING`, ignored: it only rides in
//! the command line so a test can scope a policy to its own processes. Bad arguments: a message
//! on stderr and exit 2.
//!
//! Modes:
//! - `sleep`
//! - `fds N [--step K --every MS [--max M]]`: opens exactly N more descriptors (`/dev/null`,
//!   never closed; raises the soft `RLIMIT_NOFILE` to the hard limit when needed), then K more
//!   every MS ms, up to M opened in all.
//!   The process holds N + 3 (stdio) descriptors at `ready`.
//! - `threads N [--step K --every MS]`: N parked threads (N + 1 with the main thread), then K
//!   more every MS ms.
//! - `zombies N`: N children (`/bin/true`) that exit at once and are never reaped; `ready` is
//!   printed once all N are zombies (SIGCHLD is reset to its default first, so an inherited
//!   `SIG_IGN` cannot make the kernel reap them).
//! - `grow-rss --step-mib M --every MS [--max-mib X]`: allocates and touches M MiB every MS ms
//!   (the first step right after `ready`), up to X MiB if given.
//! - `ignore-term`: ignores SIGTERM.
//! - `rename NAME`: sets its comm to NAME (`prctl(PR_SET_NAME)`, truncated to 15 bytes by the
//!   kernel); NAME may be `a) (b` or contain a newline.
//! - `launch BROWSER_PATH ARGS…`: the launcher. Starts BROWSER_PATH (a symlink to this program)
//!   with ARGS verbatim (e.g. `--user-data-dir=DIR --children K --marker=…`), waits for the
//!   browser's own `ready` line, prints `ready <own pid> <browser pid> <browser's children…>`,
//!   sleeps. SIGKILL it and the fake browser tree is orphaned.
//! - `spawn-detached BROWSER_PATH ARGS…`: starts the browser through an intermediate process that
//!   exits at once, so the browser is reparented to PID 1 (or the nearest subreaper); relays the
//!   browser's line `ready <browser pid> <children…>` and exits 0. The browser's stdin and stderr
//!   are /dev/null, so `Command::output()` on this mode returns.
//!
//! - `supervise [--subreaper] [--setsid] PROG ARGS… [-- PROG ARGS…]…`: an init or a container
//!   runtime stand-in (tests link it as `containerd-shim` or `systemd`): starts each program as
//!   its child (in a new session with `--setsid`, as runc and systemd do), optionally becomes a
//!   child subreaper (as containerd-shim is), prints `ready <own pid> <child pids…>`, then reaps
//!   every child, its own and adopted ones, forever.
//! - `crashpad-client HANDLER ARGS…`: an app with its own crash handler (an Electron app): makes
//!   a SOCK_SEQPACKET socketpair, starts `HANDLER ARGS… --initial-client-fd=N` detached (double
//!   fork: the handler's parent is PID 1 or the subreaper) with one end, keeps the other, prints
//!   `ready <own pid> <handler pid>`, sleeps. SIGKILL it and the handler's client is gone.
//!
//! Called through a symlink whose name starts with `chrome_crashpad` it is a fake crash handler
//! that lingers: it holds what it inherited and sleeps, even after its client is gone.
//!
//! Fake browser (argv[0]'s file name is not `lw-fixture`):
//! - without `--type=`: the browser. Creates `--user-data-dir=DIR` if given, with a
//!   `SingletonLock` symlink to `<hostname>-<pid>` as Chromium does; starts `--children K`
//!   (default 3) children of itself through the same argv[0], with the same `--user-data-dir`
//!   and `--marker`s: roles `--type=gpu-process`, `--type=utility`, then `--type=renderer` (K = 1:
//!   one renderer; K = 2: gpu-process and renderer). Prints `ready <pid> <child pids…>`.
//!   `--grow-rss-mib-per-sec=R` and `--leak-fds-per-sec=R` are passed to the renderers only.
//! - with `--type=ROLE`: a child. Prints `ready <pid>`, leaks at the given rates if any, and exits
//!   when its parent changes (polled every 200 ms), as a real renderer does when its browser's
//!   IPC pipe closes.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource};

const MIB: usize = 1 << 20;
/// Options that take a value (`--opt V` or `--opt=V`); any other `--opt` is a flag.
const VALUED: &[&str] = &[
    "step",
    "every",
    "step-mib",
    "max-mib",
    "max",
    "children",
    "grow-rss-mib-per-sec",
    "leak-fds-per-sec",
];

type Res<T = ()> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `supervise` and `crashpad-client` are run through symlinks named like the program they
    // stand in for (`containerd-shim`, `systemd`, an app): the mode decides, not the name.
    let named_mode = matches!(
        args.get(1).map(String::as_str),
        Some("supervise" | "crashpad-client")
    );
    let r = if name.starts_with("lw-fixture") || name.starts_with("lw_fixture") || named_mode {
        fixture(&args[1.min(args.len())..])
    } else if name.starts_with("chrome_crashpad") {
        sleep_forever()
    } else {
        fake_browser(&argv0, &args[1.min(args.len())..])
    };
    if let Err(e) = r {
        eprintln!("lw-fixture: {e}");
        std::process::exit(2);
    }
}

// === arguments ===

/// Positional arguments and options of one mode.
struct Args {
    pos: Vec<String>,
    opts: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(args: &[String]) -> Res<Self> {
        let mut pos = Vec::new();
        let mut opts = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(o) = a.strip_prefix("--") {
                if let Some((k, v)) = o.split_once('=') {
                    opts.push((k.to_string(), Some(v.to_string())));
                } else if VALUED.contains(&o) {
                    let v = it.next().ok_or_else(|| format!("--{o} needs a value"))?;
                    opts.push((o.to_string(), Some(v.clone())));
                } else {
                    opts.push((o.to_string(), None));
                }
            } else {
                pos.push(a.clone());
            }
        }
        Ok(Args { pos, opts })
    }

    fn opt(&self, key: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Res<Option<T>> {
        self.opt(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{key}: not a number: {v:?}"))
            })
            .transpose()
    }

    fn pos_num(&self, i: usize, what: &str) -> Res<usize> {
        let v = self.pos.get(i).ok_or_else(|| format!("missing {what}"))?;
        v.parse()
            .map_err(|_| format!("{what}: not a number: {v:?}"))
    }

    /// `--step K --every MS`, both or neither.
    fn step(&self) -> Res<Option<(usize, Duration)>> {
        match (self.num::<usize>("step")?, self.num::<u64>("every")?) {
            (Some(k), Some(ms)) if ms > 0 => Ok(Some((k, Duration::from_millis(ms)))),
            (None, None) => Ok(None),
            _ => Err("--step K and --every MS (MS > 0) go together".into()),
        }
    }
}

// === output ===

fn ready(fields: &[u32]) {
    let mut line = String::from("ready");
    for f in fields {
        line.push(' ');
        line.push_str(&f.to_string());
    }
    let mut out = std::io::stdout().lock();
    // The reader may be gone already; the fixture keeps going regardless.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn sleep_forever() -> ! {
    loop {
        thread::park();
    }
}

// === modes ===

fn fixture(args: &[String]) -> Res {
    let mode = args.first().map(String::as_str).unwrap_or("");
    let rest = &args[1.min(args.len())..];
    match mode {
        "launch" => return launch(rest),
        "spawn-detached" => return spawn_detached(rest),
        "__detach" => return detach_intermediate(rest),
        "supervise" => return supervise(rest),
        "crashpad-client" => return crashpad_client(rest),
        "__detach-quiet" => return detach_quiet(rest),
        _ => {}
    }
    let a = Args::parse(rest)?;
    let me = std::process::id();
    match mode {
        "sleep" => {
            ready(&[me]);
            sleep_forever()
        }
        "fds" => {
            let n = a.pos_num(0, "N (descriptors)")?;
            let step = a.step()?;
            let max: Option<usize> = a.num("max")?;
            let mut held = Vec::new();
            open_fds(&mut held, n)?;
            ready(&[me]);
            let Some((k, every)) = step else {
                sleep_forever()
            };
            let mut warned = false;
            loop {
                thread::sleep(every);
                if max.is_some_and(|m| held.len() + k > m) {
                    continue;
                }
                if let Err(e) = open_fds(&mut held, k) {
                    if !warned {
                        eprintln!("lw-fixture: fds: {e} (keeps running)");
                        warned = true;
                    }
                }
            }
        }
        "threads" => {
            let n = a.pos_num(0, "N (threads)")?;
            let step = a.step()?;
            spawn_parked(n)?;
            ready(&[me]);
            let Some((k, every)) = step else {
                sleep_forever()
            };
            loop {
                thread::sleep(every);
                if let Err(e) = spawn_parked(k) {
                    eprintln!("lw-fixture: threads: {e} (keeps running)");
                }
            }
        }
        "zombies" => {
            let n = a.pos_num(0, "N (zombies)")?;
            zombies(n)
        }
        "grow-rss" => {
            let step: usize = a
                .num("step-mib")?
                .ok_or("grow-rss needs --step-mib M --every MS")?;
            let every: u64 = a
                .num("every")?
                .ok_or("grow-rss needs --step-mib M --every MS")?;
            let max: Option<usize> = a.num("max-mib")?;
            ready(&[me]);
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut total = 0usize;
            loop {
                if max.is_some_and(|m| total + step > m) {
                    sleep_forever()
                }
                held.push(touched(step * MIB));
                total += step;
                thread::sleep(Duration::from_millis(every));
            }
        }
        "ignore-term" => {
            ignore_sigterm();
            ready(&[me]);
            sleep_forever()
        }
        "rename" => {
            let name = a.pos.first().ok_or("rename needs NAME")?;
            let c = CString::new(name.as_bytes()).map_err(|_| "NAME holds a NUL byte")?;
            rustix::thread::set_name(&c).map_err(|e| format!("prctl(PR_SET_NAME): {e}"))?;
            ready(&[me]);
            sleep_forever()
        }
        "" => Err(
            "usage: lw-fixture MODE …; modes: sleep, fds, threads, zombies, grow-rss, \
                   ignore-term, rename, launch, spawn-detached (see the source's doc)"
                .into(),
        ),
        other => Err(format!("unknown mode {other:?}")),
    }
}

/// Open `n` more descriptors on /dev/null, raising the soft limit to the hard one if needed.
fn open_fds(held: &mut Vec<File>, n: usize) -> Res {
    let lim = getrlimit(Resource::Nofile);
    let want = (held.len() + n + 64) as u64;
    if lim.current.is_some_and(|c| c < want) && lim.current != lim.maximum {
        let new = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        setrlimit(Resource::Nofile, new).map_err(|e| format!("setrlimit(NOFILE): {e}"))?;
    }
    held.reserve(n);
    for _ in 0..n {
        let f = File::open("/dev/null")
            .map_err(|e| format!("open /dev/null after {} descriptors: {e}", held.len()))?;
        held.push(f);
    }
    Ok(())
}

fn spawn_parked(n: usize) -> Res {
    for i in 0..n {
        thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| loop {
                thread::park();
            })
            .map_err(|e| format!("spawning thread {i} of {n}: {e}"))?;
    }
    Ok(())
}

/// `len` bytes, every page written (a non-zero fill, so no page stays the shared zero page).
fn touched(len: usize) -> Vec<u8> {
    std::hint::black_box(vec![0xa5u8; len])
}

fn zombies(n: usize) -> Res {
    default_sigchld();
    let mut kids: Vec<Child> = Vec::with_capacity(n);
    for _ in 0..n {
        let c = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning /bin/true: {e}"))?;
        kids.push(c);
    }
    // Report ready once each child has exited (state Z), without reaping it.
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in &kids {
        while !is_zombie(c.id()) {
            if Instant::now() > deadline {
                return Err(format!("child {} did not become a zombie", c.id()));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    let me = std::process::id();
    ready(&[me]);
    // Child's Drop does not wait; forget them anyway so nothing ever reaps them.
    std::mem::forget(kids);
    sleep_forever()
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[allow(unsafe_code)]
fn ignore_sigterm() {
    // SAFETY: installing SIG_IGN has no handler code to run; called before any other thread
    // exists in this mode.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

#[allow(unsafe_code)]
fn default_sigchld() {
    // SAFETY: SIG_DFL installs no handler; single-threaded at this point.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}

// === launcher ===

/// Start the browser with stdout piped and read its `ready …` line.
fn start_browser(path: &str, args: &[String], quiet: bool) -> Res<(Child, Vec<u32>)> {
    let mut cmd = Command::new(path);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
    if quiet {
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting {path}: {e}"))?;
    let out = child.stdout.take().ok_or("browser stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("reading the browser's ready line: {e}"))?;
    let pids = line
        .strip_prefix("ready")
        .map(|r| {
            r.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .ok_or_else(|| format!("browser {path} said {line:?}, not ready"))?;
    Ok((child, pids))
}

fn launch(args: &[String]) -> Res {
    let path = args.first().ok_or("launch needs BROWSER_PATH")?;
    let (child, pids) = start_browser(path, &args[1..], false)?;
    let mut line = vec![std::process::id()];
    line.extend(pids);
    ready(&line);
    // Never reaped by us: when the launcher is SIGKILLed the tree is orphaned.
    std::mem::forget(child);
    sleep_forever()
}

fn spawn_detached(args: &[String]) -> Res {
    if args.is_empty() {
        return Err("spawn-detached needs BROWSER_PATH".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut mid = Command::new(exe)
        .arg("__detach")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the intermediate: {e}"))?;
    let out = mid.stdout.take().ok_or("intermediate stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("reading the intermediate: {e}"))?;
    let status = mid
        .wait()
        .map_err(|e| format!("waiting the intermediate: {e}"))?;
    if !status.success() || !line.starts_with("ready") {
        return Err(format!("intermediate failed ({status}): {line:?}"));
    }
    let mut o = std::io::stdout().lock();
    let _ = write!(o, "{line}");
    let _ = o.flush();
    Ok(())
}

/// The middle of the double fork: start the browser, relay its line, exit without waiting.
fn detach_intermediate(args: &[String]) -> Res {
    let path = args.first().ok_or("spawn-detached needs BROWSER_PATH")?;
    let (child, pids) = start_browser(path, &args[1..], true)?;
    ready(&pids);
    std::mem::forget(child);
    std::process::exit(0)
}

// === inits, runtimes and apps ===

fn supervise(args: &[String]) -> Res {
    let mut subreaper = false;
    let mut setsid = false;
    let mut rest = args;
    while let Some(a) = rest.first() {
        match a.as_str() {
            "--subreaper" => subreaper = true,
            "--setsid" => setsid = true,
            _ => break,
        }
        rest = &rest[1..];
    }
    if subreaper {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    }
    default_sigchld();
    let mut pids = vec![std::process::id()];
    for prog in rest.split(|a| a == "--") {
        let Some((path, argv)) = prog.split_first() else {
            continue;
        };
        let mut cmd = Command::new(path);
        cmd.args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if setsid {
            new_session(&mut cmd);
        }
        let child = cmd.spawn().map_err(|e| format!("starting {path}: {e}"))?;
        pids.push(child.id());
        // Reaped below with every other child, never through this handle.
        std::mem::forget(child);
    }
    ready(&pids);
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(_) => {}
            // No child right now: adopted ones may come later.
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe and allocates nothing; it runs in the forked child
    // before exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}

fn crashpad_client(args: &[String]) -> Res {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::os::fd::AsRawFd;
    let handler = args.first().ok_or("crashpad-client needs HANDLER")?;
    // The app's end is close-on-exec; the handler's end is inherited through the double fork.
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
        .map_err(|e| format!("fcntl: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut mid = Command::new(exe)
        .arg("__detach-quiet")
        .arg(handler)
        .args(&args[1..])
        .arg(format!("--initial-client-fd={}", theirs.as_raw_fd()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the intermediate: {e}"))?;
    drop(theirs);
    let out = mid.stdout.take().ok_or("intermediate stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("reading the intermediate: {e}"))?;
    let _ = mid.wait();
    let handler_pid: u32 = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("intermediate said {line:?}"))?;
    ready(&[std::process::id(), handler_pid]);
    let _keep = mine;
    sleep_forever()
}

/// The middle of a double fork whose grandchild prints nothing: start it, say its pid, exit.
fn detach_quiet(args: &[String]) -> Res {
    let path = args.first().ok_or("__detach-quiet needs PROG")?;
    let child = Command::new(path)
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {path}: {e}"))?;
    ready(&[child.id()]);
    std::mem::forget(child);
    std::process::exit(0)
}

// === fake browser ===

fn fake_browser(argv0: &str, args: &[String]) -> Res {
    let a = Args::parse(args)?;
    let me = std::process::id();
    if a.opt("type").is_some() {
        return browser_child(&a);
    }
    let k: usize = a.num("children")?.unwrap_or(3);
    let udd = a.opt("user-data-dir");
    if let Some(dir) = udd {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let lock = Path::new(dir).join("SingletonLock");
        let _ = std::fs::remove_file(&lock);
        std::os::unix::fs::symlink(format!("{host}-{me}"), &lock)
            .map_err(|e| format!("creating {}: {e}", lock.display()))?;
    }
    let roles: Vec<&str> = (0..k)
        .map(|i| match (k, i) {
            (1, _) => "renderer",
            (_, 0) => "gpu-process",
            (3.., 1) => "utility",
            _ => "renderer",
        })
        .collect();
    let mut kids = Vec::with_capacity(k);
    let mut pids = vec![me];
    for role in roles {
        let mut cmd = Command::new(argv0);
        cmd.arg(format!("--type={role}"));
        if role == "utility" {
            cmd.arg("--utility-sub-type=network.mojom.NetworkService");
        }
        if let Some(dir) = udd {
            cmd.arg(format!("--user-data-dir={dir}"));
        }
        for (key, v) in &a.opts {
            let forward = match key.as_str() {
                "marker" => true,
                "grow-rss-mib-per-sec" | "leak-fds-per-sec" => role == "renderer",
                _ => false,
            };
            if forward {
                match v {
                    Some(v) => cmd.arg(format!("--{key}={v}")),
                    None => cmd.arg(format!("--{key}")),
                };
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let c = cmd
            .spawn()
            .map_err(|e| format!("starting a {role} child: {e}"))?;
        pids.push(c.id());
        kids.push(c);
    }
    ready(&pids);
    // Children stay owned (and, once dead, unreaped) by the browser.
    std::mem::forget(kids);
    sleep_forever()
}

/// A `--type=` child: optional leaks, exit when the parent changes.
fn browser_child(a: &Args) -> Res {
    let rss_rate: f64 = a.num("grow-rss-mib-per-sec")?.unwrap_or(0.0);
    let fd_rate: f64 = a.num("leak-fds-per-sec")?.unwrap_or(0.0);
    let parent = rustix::process::getppid();
    ready(&[std::process::id()]);
    let tick = Duration::from_millis(200);
    let (mut rss_due, mut fd_due) = (0.0f64, 0.0f64);
    let mut mem: Vec<Vec<u8>> = Vec::new();
    let mut fds: Vec<File> = Vec::new();
    let mut warned = false;
    loop {
        thread::sleep(tick);
        if rustix::process::getppid() != parent {
            std::process::exit(0);
        }
        rss_due += rss_rate * tick.as_secs_f64();
        if rss_due >= 1.0 {
            let mib = rss_due.floor();
            mem.push(touched(mib as usize * MIB));
            rss_due -= mib;
        }
        fd_due += fd_rate * tick.as_secs_f64();
        if fd_due >= 1.0 {
            let n = fd_due.floor();
            fd_due -= n;
            if let Err(e) = open_fds(&mut fds, n as usize) {
                if !warned {
                    eprintln!("lw-fixture: leak-fds: {e} (keeps running)");
                    warned = true;
                }
            }
        }
    }
}
