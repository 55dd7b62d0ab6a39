//! One Chromium process: spawn, connect, contexts, and closing that leaves nothing behind.
//!
//! The runner spawns Chromium itself (through the launcher thread, `launcher.rs`) instead of
//! letting `chromiumoxide` do it, because `chromiumoxide` kills and waits only its direct child.
//! Each browser gets a directory `<run dir>/b<N>/` holding its profile (`--user-data-dir`), its
//! `TMPDIR` and its `XDG_CONFIG_HOME` (so the crashpad handlers' `--database` names it too),
//! and its stderr log. Its own process group, and SIGKILL when the runner dies.
//!
//! Closing (always, whatever happened): CDP `Browser.close` with a deadline → wait for the
//! browser's exit on its pidfd → find every process of the browser (its process group, and any
//! process whose command line names its directory: that catches the crashpad handlers, which
//! `setsid()`) → SIGTERM through pidfds → SIGKILL after a grace period → reap → verify in /proc
//! that none is left → remove the directory. Whatever verification finds is returned as a leak.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use chromiumoxide::cdp::browser_protocol::browser::{BrowserContextId, CloseParams};
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams, GetTargetsParams,
};
use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::Page;
use futures::StreamExt;
use rustix::process::{Signal, WaitId, WaitIdOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kill;
use crate::launcher::{LaunchHandle, Mode, Owned};
use crate::proc::{Procfs, Scan, ScanError, Stat};

pub mod pipe;

/// Flags for every browser. Headless as root needs `--no-sandbox`; the rest cut work a runner
/// never needs (background networking, component updates, sync, first-run UI, GPU). The features
/// turned off are in [`DISABLED_FEATURES`]; [`flags`] puts them and a user's own together.
///
/// Not used, though commonly recommended: `--disable-crashpad-for-testing`. On this machine's
/// Chromium 156 it makes the network service crash in a loop ("Crashing due to FD ownership
/// violation", ~10 restarts a second) and every http navigation fail. The crashpad handlers it
/// would suppress are instead tied to the browser's directory and cleaned up with it.
pub const BASE_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-sync",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-component-extensions-with-background-pages",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-hang-monitor",
    "--disable-ipc-flooding-protection",
    "--disable-field-trial-config",
    "--disable-popup-blocking",
    "--disable-prompt-on-repost",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--no-service-autorun",
    "--no-pings",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",
];

/// Chromium features every browser runs without (`--disable-features`).
///
/// `WebUIOmniboxPopup` and `WebUIOmniboxAimPopup` matter most: with them, Chromium 156 gives
/// every browser context two `browser_ui` targets (`chrome://omnibox-popup.top-chrome/…`) in a
/// WebUI renderer process of their own — an address-bar popup nobody can see in headless mode,
/// started once per session, since a session is a context. Without them a session's context
/// has one renderer, not two: the bench's cell CPU per session fell from 0.96–1.21 s to
/// 0.51–0.67 s (BENCHMARKS.md, "Runner vs peers"). `SpareRendererForSitePerProcess` next:
/// Chromium keeps a renderer started ahead for the context it used last, for that context's
/// next navigation; a session's context is new and lives for one session, so every spare was
/// started for nothing and thrown away with its context (three renderer starts per session
/// where its page needs one; 0.69 → 0.60 cell CPU-s per session, BENCHMARKS.md). The rest: no
/// back/forward cache (a session
/// never goes back; a cached page keeps its renderer busy), no paint holding, no HTTPS upgrade of
/// the `http://` URLs a job names, no translate, media router, optimisation hints, feeds,
/// component updaters or autofill requests.
pub const DISABLED_FEATURES: &[&str] = &[
    "WebUIOmniboxPopup",
    "WebUIOmniboxAimPopup",
    "SpareRendererForSitePerProcess",
    "BackForwardCache",
    "PaintHolding",
    "HttpsUpgrades",
    "AcceptCHFrame",
    "LensOverlay",
    "Translate",
    "OptimizationHints",
    "OptimizationHintsFetching",
    "OptimizationGuideModelDownloading",
    "OptimizationTargetPrediction",
    "MediaRouter",
    "DialMediaRouteProvider",
    "InterestFeedContentSuggestions",
    "CertificateTransparencyComponentUpdater",
    "AutofillServerCommunication",
];

/// The command-line flags of a browser: [`BASE_FLAGS`], then the user's (`--chromium-arg`),
/// with every `--disable-features` list — ours and any of the user's — merged into one.
/// Chromium reads only the last `--disable-features` it is given: a user's own list would
/// otherwise silently turn ours back on (the per-context WebUI renderer above among them).
pub fn flags(extra: &[String]) -> Vec<String> {
    const DISABLE: &str = "--disable-features=";
    let mut features: Vec<String> = DISABLED_FEATURES.iter().map(|f| f.to_string()).collect();
    let mut out: Vec<String> = BASE_FLAGS.iter().map(|f| f.to_string()).collect();
    for a in extra {
        match a.strip_prefix(DISABLE) {
            Some(list) => {
                for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if !features.iter().any(|g| g == f) {
                        features.push(f.to_string());
                    }
                }
            }
            None => out.push(a.clone()),
        }
    }
    out.push(format!("{DISABLE}{}", features.join(",")));
    out
}

/// How to launch and how long each part of closing may take.
#[derive(Debug, Clone)]
pub struct Spec {
    pub chromium: PathBuf,
    pub extra_args: Vec<String>,
    pub launch_timeout: Duration,
    /// chromiumoxide's own request timeout; our per-step timeouts are shorter and cancel first.
    pub request_timeout: Duration,
    pub close_timeout: Duration,
    pub exit_wait: Duration,
    pub term_grace: Duration,
    pub kill_wait: Duration,
    pub verify_deadline: Duration,
    /// Proxy (and bypass list) of every browser context created (a job's `network.proxy`).
    pub context_proxy: Option<(String, Option<String>)>,
    /// chromiumoxide pauses every request of every page and leaves continuing them to us (a
    /// job with proxy credentials: chromiumoxide answers the challenge, `jobnet.rs` each
    /// paused request — otherwise both would, and a blocked request could slip through).
    pub request_intercept: bool,
}

impl Spec {
    pub fn new(chromium: PathBuf) -> Self {
        Self {
            chromium,
            extra_args: Vec::new(),
            launch_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(2),
            exit_wait: Duration::from_secs(3),
            term_grace: Duration::from_millis(1500),
            kill_wait: Duration::from_secs(2),
            verify_deadline: Duration::from_secs(2),
            context_proxy: None,
            request_intercept: false,
        }
    }
}

/// Chromium binds `$TMPDIR/org.chromium.Chromium.XXXXXX/SingletonSocket` (46 more bytes), and
/// a unix socket path has at most 107. With a longer TMPDIR the browser dies at start
/// ("Socket path too long"). The run checks its directory against this at start.
pub const MAX_TMPDIR_LEN: usize = 107 - 46;

/// The largest browser id the start-up check provides for. Ids grow for the whole life of a
/// run or a service (one per launch, never reused); ten digits last 30 years at ten launches a
/// second. A launch past it is refused by [`check_tmpdir`] rather than started to die.
pub const MAX_BROWSER_ID: u64 = 9_999_999_999;

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The longest TMPDIR a browser of this run will get: `<run dir>/b<id>/t` with ids up to
/// [`MAX_BROWSER_ID`], and, when the `abandon` fault may hit sessions up to index
/// `abandon_max`, `<run dir>.abandoned-<index>/t`.
pub fn longest_tmpdir(run_dir: &Path, abandon_max: Option<u64>) -> usize {
    let pooled = "/b".len() + digits(MAX_BROWSER_ID) + "/t".len();
    let abandoned = abandon_max.map_or(0, |n| ".abandoned-".len() + digits(n) + "/t".len());
    run_dir.as_os_str().len() + pooled.max(abandoned)
}

/// Refuse a browser TMPDIR too long for Chromium's unix sockets (see [`MAX_TMPDIR_LEN`]):
/// started, the browser would die at once ("Socket path too long").
pub fn check_tmpdir(tmp: &Path) -> Result<(), TmpdirTooLong> {
    let len = tmp.as_os_str().len();
    if len > MAX_TMPDIR_LEN {
        return Err(TmpdirTooLong {
            path: tmp.to_path_buf(),
            len,
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("browser temp directory {} is {len} bytes; Chromium's unix socket paths allow {max} there: use a shorter --run-dir", .path.display(), max = MAX_TMPDIR_LEN)]
pub struct TmpdirTooLong {
    pub path: PathBuf,
    pub len: usize,
}

/// Everything a browser needs from the run.
#[derive(Clone)]
pub struct Env {
    pub launcher: LaunchHandle,
    pub owned: Owned,
    pub procfs: Procfs,
    pub tasks: TaskTracker,
}

pub struct Browser {
    pub id: u64,
    pub pid: i32,
    start_time: u64,
    pidfd: Option<OwnedFd>,
    pub dir: PathBuf,
    pub cdp: chromiumoxide::Browser,
    handler_stop: CancellationToken,
    /// Cancelled when the browser process has exited (seen on its pidfd).
    pub dead: CancellationToken,
    pub launched_at: Instant,
    pub detached: bool,
    tasks: TaskTracker,
    /// A context and page made ready ahead of the next session (see [`Browser::start_warm`]).
    warm: std::sync::Mutex<Option<Warm>>,
    context_proxy: Option<(String, Option<String>)>,
}

/// How long a warm-up that came too late may take to dispose of its context.
const WARM_DISPOSE_TIMEOUT: Duration = Duration::from_secs(2);

type Warm = tokio::task::JoinHandle<anyhow::Result<(BrowserContextId, Page)>>;

/// What closing found.
#[derive(Debug, Default, Clone)]
pub struct CloseReport {
    /// Processes still alive after SIGKILL and the verification deadline.
    pub leaked_processes: Vec<Stat>,
    /// The directory could not be removed.
    pub dir_left: bool,
    /// Processes that needed a signal (exited only after SIGTERM/SIGKILL).
    pub signalled: usize,
    /// Verification could not read all of `/proc` (EMFILE, …) until its deadline: why. Nothing
    /// proves this close clean, so [`CloseReport::leaks`] counts it as one.
    pub unverified: Option<String>,
}

impl CloseReport {
    /// Leaked processes, a directory left, and a verification that could not run (one each).
    pub fn leaks(&self) -> u64 {
        self.leaked_processes.len() as u64
            + u64::from(self.dir_left)
            + u64::from(self.unverified.is_some())
    }
}

impl Browser {
    /// Spawn Chromium in `dir` and connect over CDP. On failure everything started is cleaned up.
    pub async fn launch(
        id: u64,
        dir: PathBuf,
        spec: &Spec,
        env: &Env,
        mode: Mode,
    ) -> anyhow::Result<Self> {
        // Short names: Chromium puts unix sockets under TMPDIR (see MAX_TMPDIR_LEN).
        let profile = dir.join("p");
        let tmp = dir.join("t");
        let config = dir.join("c");
        check_tmpdir(&tmp)?;
        for d in [&profile, &tmp, &config] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = Command::new(&spec.chromium);
        cmd.args(flags(&spec.extra_args))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", &config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let spawned = env
            .launcher
            .spawn(cmd, mode)
            .await
            .with_context(|| format!("spawning {}", spec.chromium.display()))?;
        let start_time = env
            .procfs
            .stat(spawned.pid)
            .ok()
            .flatten()
            .map(|s| s.start_ticks)
            .unwrap_or(0);
        let dead = CancellationToken::new();
        if let Some(fd) = spawned.pidfd.as_ref().and_then(|fd| fd.try_clone().ok()) {
            let dead = dead.clone();
            env.tasks.spawn(async move {
                if let Ok(afd) = leakwarden_core::pidfd::async_pidfd(fd) {
                    let _ = afd.readable().await;
                }
                dead.cancel();
            });
        }
        let handler_stop = CancellationToken::new();
        let connected = tokio::time::timeout(
            spec.launch_timeout,
            connect(&profile, &dead, spec, &env.tasks, &handler_stop),
        )
        .await
        .map_err(|_| anyhow!("no DevTools endpoint within {:?}", spec.launch_timeout))
        .and_then(|r| r);
        match connected {
            Ok(cdp) => Ok(Browser {
                id,
                pid: spawned.pid,
                start_time,
                pidfd: spawned.pidfd,
                dir,
                cdp,
                handler_stop,
                dead,
                launched_at: Instant::now(),
                detached: mode == Mode::Detached,
                tasks: env.tasks.clone(),
                warm: std::sync::Mutex::new(None),
                context_proxy: spec.context_proxy.clone(),
            }),
            Err(e) => {
                handler_stop.cancel();
                let log = stderr_tail(&dir);
                if mode == Mode::Owned {
                    // Clean up what we started, with no CDP connection to ask politely.
                    let _ = destroy(
                        spawned.pid,
                        start_time,
                        spawned.pidfd.as_ref(),
                        &dir,
                        spec,
                        env,
                        false,
                    )
                    .await;
                }
                Err(e.context(format!("launching browser b{id}; stderr: {log}")))
            }
        }
    }

    /// A fresh browser context (an incognito-like profile inside this browser) and a blank page
    /// in it.
    pub async fn new_context(&self) -> anyhow::Result<BrowserContextId> {
        let mut params = CreateBrowserContextParams::default();
        if let Some((proxy, bypass)) = &self.context_proxy {
            params.proxy_server = Some(proxy.clone());
            params.proxy_bypass_list = bypass.clone();
        }
        Ok(self.cdp.create_browser_context(params).await?)
    }

    pub async fn new_page(&self, ctx: &BrowserContextId) -> anyhow::Result<Page> {
        let mut params = CreateTargetParams::new("about:blank");
        params.browser_context_id = Some(ctx.clone());
        let page = self.cdp.new_page(params).await?;
        // chromiumoxide enables the Performance and Log domains on every page it attaches to;
        // a session reads neither: turn them off (Chromium then stops collecting for them). Only
        // an optimisation: a failure here is logged, and the session's own steps find out
        // whether the page works.
        use chromiumoxide::cdp::browser_protocol::{log, performance};
        let (p, l) = tokio::join!(
            page.execute(performance::DisableParams::default()),
            page.execute(log::DisableParams::default())
        );
        if let Some(e) = p.err().or(l.err()) {
            tracing::debug!(error = %e, "turning the Performance and Log domains off");
        }
        Ok(page)
    }

    /// Dispose a context (closing its pages) and check that no target of it remains.
    pub async fn dispose_context(&self, ctx: &BrowserContextId) -> anyhow::Result<()> {
        self.cdp.dispose_browser_context(ctx.clone()).await?;
        let targets = self.cdp.execute(GetTargetsParams::default()).await?;
        let left = targets
            .result
            .target_infos
            .iter()
            .filter(|t| t.browser_context_id.as_ref() == Some(ctx))
            .count();
        if left > 0 {
            bail!("{left} target(s) of a disposed context remain");
        }
        Ok(())
    }

    /// Start creating a context and its page for the next session, unless one is ready or on
    /// its way. A new context starts a new renderer process (hundreds of milliseconds, most of a
    /// session's set-up); doing it while the current session runs takes it off the next
    /// session's path. The task is owned by the run's tracker and aborted at close; a context
    /// nobody took dies with its browser.
    pub fn start_warm(self: &std::sync::Arc<Self>, limit: Duration) {
        let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_some() || self.dead.is_cancelled() {
            return;
        }
        let b = self.clone();
        *w = Some(self.tasks.spawn(async move {
            let started = Instant::now();
            // Not under the timeout: a reply dropped by a timeout would leave a context (and
            // its renderer) nobody knows of. chromiumoxide's request timeout bounds the call.
            let ctx = b.new_context().await?;
            let left = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, b.new_page(&ctx)).await {
                Ok(Ok(page)) => Ok((ctx, page)),
                late => {
                    // Too late, or no page: the context must not outlive this task.
                    let _ = tokio::time::timeout(
                        WARM_DISPOSE_TIMEOUT,
                        b.cdp.dispose_browser_context(ctx),
                    )
                    .await;
                    Err(match late {
                        Ok(Err(e)) => e,
                        _ => anyhow!("warm-up timed out after {limit:?}"),
                    })
                }
            }
        }));
    }

    /// The context and page prepared by [`Browser::start_warm`], if any.
    pub fn take_warm(&self) -> Option<Warm> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// SIGKILL the browser process (the `kill-browser` fault).
    pub fn kill_for_fault(&self) -> bool {
        self.pidfd
            .as_ref()
            .is_some_and(|fd| kill::send(fd, Signal::KILL))
    }

    /// Close and clean up: see the module documentation. Takes `&self` so a session that still
    /// holds a clone cannot block cleanup; after this the browser is unusable.
    pub async fn close(&self, spec: &Spec, env: &Env) -> CloseReport {
        if let Some(w) = self.take_warm() {
            w.abort();
        }
        if self.detached {
            // The `abandon` fault: drop the connection, leave the browser running.
            self.handler_stop.cancel();
            return CloseReport::default();
        }
        let polite = !self.dead.is_cancelled();
        if polite {
            // The reply to Browser.close often never comes (the browser is gone first, and
            // chromiumoxide then waits out the deadline): the process exiting is the answer.
            let close = async {
                tokio::select! {
                    _ = self.cdp.execute(CloseParams::default()) => {}
                    _ = self.dead.cancelled() => {}
                }
            };
            let _ = tokio::time::timeout(spec.close_timeout, close).await;
        }
        self.handler_stop.cancel();
        destroy(
            self.pid,
            self.start_time,
            self.pidfd.as_ref(),
            &self.dir,
            spec,
            env,
            polite,
        )
        .await
    }
}

/// Everything after the CDP close, with or without a CDP connection.
pub(crate) async fn destroy(
    pid: i32,
    start_time: u64,
    pidfd: Option<&OwnedFd>,
    dir: &Path,
    spec: &Spec,
    env: &Env,
    waited_politely: bool,
) -> CloseReport {
    let mut report = CloseReport::default();
    tracing::debug!(pid, start_time, dir = %dir.display(), "destroying browser");
    let t0 = Instant::now();
    if let Some(fd) = pidfd {
        let exited = waited_politely && kill::wait_exit(fd, spec.exit_wait).await;
        if !exited {
            // Identity is the pidfd itself: it cannot refer to a reused pid.
            kill::send(fd, Signal::TERM);
            if !kill::wait_exit(fd, spec.term_grace).await {
                kill::send(fd, Signal::KILL);
                kill::wait_exit(fd, spec.kill_wait).await;
            }
            report.signalled += 1;
        }
    }
    tracing::debug!(
        pid,
        exited_ms = t0.elapsed().as_millis() as u64,
        "browser process exited"
    );
    let needle = dir_needle(dir);
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // Never 0 or 1: inside a PID namespace a group led from outside reads as 0.
    let pgid = (pid > 1).then_some(pid);

    // Everything else of this browser: group members and processes naming its directory. An
    // incomplete scan still yields what it read; verification below decides.
    let stragglers: Vec<Stat> = scan(&env.procfs, pgid, &needle, me)
        .await
        .found
        .into_iter()
        .filter(|s| s.state != 'Z')
        .collect();
    if !stragglers.is_empty() {
        report.signalled += stragglers.len();
        tracing::debug!(count = stragglers.len(), "terminating browser stragglers");
        kill::terminate(&env.procfs, &stragglers, spec.term_grace, spec.kill_wait).await;
    }

    // Reap the browser itself (ours, through its pidfd), then inherited zombies.
    if let Some(fd) = pidfd {
        let _ = rustix::process::waitid(
            WaitId::PidFd(std::os::fd::AsFd::as_fd(fd)),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
    }
    env.owned.release(pid);
    tracing::debug!(
        pid,
        ms = t0.elapsed().as_millis() as u64,
        "stragglers handled; verifying"
    );

    // Verify: nothing of this browser may be left but zombies on their way to a reaper. A scan
    // that could not read all of /proc is no proof (under EMFILE it would find nothing): it is
    // retried until the deadline, then reported unverified — never clean.
    let deadline = Instant::now() + spec.verify_deadline;
    loop {
        crate::reaper::reap_pass(&env.procfs, &env.owned);
        let found = scan(&env.procfs, pgid, &needle, me).await;
        let left: Vec<Stat> = found.found.into_iter().filter(|s| s.state != 'Z').collect();
        if left.is_empty() && found.unverified.is_none() {
            break;
        }
        if Instant::now() >= deadline {
            for s in &left {
                tracing::error!(pid = s.pid, comm = %s.comm, state = %s.state, dir = %dir.display(), "cleanup leak: process survived SIGKILL");
            }
            if let Some(e) = found.unverified {
                tracing::error!(dir = %dir.display(), error = %e, "cleanup unverified: /proc could not be read, so nothing proves this browser gone");
                report.unverified = Some(e.to_string());
            }
            report.leaked_processes = left;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if let Err(e) = remove_dir(dir).await {
        tracing::error!(dir = %dir.display(), error = %e, "cleanup leak: browser directory not removed");
        report.dir_left = true;
    }
    report
}

/// [`Procfs::find`] off the async threads. A scan whose thread died is an unverified one.
async fn scan(procfs: &Procfs, pgid: Option<i32>, needle: &[u8], me: i32) -> Scan {
    let p = procfs.clone();
    let needle = needle.to_vec();
    tokio::task::spawn_blocking(move || p.find(pgid, &needle, me))
        .await
        .unwrap_or_else(|e| Scan {
            found: Vec::new(),
            unverified: Some(ScanError::List {
                root: procfs.root().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }),
        })
}

/// `<dir>/` as bytes: matches `--user-data-dir=<dir>/profile` and crashpad's
/// `--database=<dir>/config/…`, never a sibling `b12` for `b1`.
fn dir_needle(dir: &Path) -> Vec<u8> {
    let mut n = dir.as_os_str().as_encoded_bytes().to_vec();
    n.push(b'/');
    n
}

async fn remove_dir(dir: &Path) -> std::io::Result<()> {
    let d = dir.to_path_buf();
    let first = blocking_io(move || std::fs::remove_dir_all(&d)).await;
    match first {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            // A process that exited a moment ago may still have been writing; once more.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let d = dir.to_path_buf();
            match blocking_io(move || std::fs::remove_dir_all(&d)).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        }
    }
}

async fn blocking_io(
    f: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

pub(crate) fn stderr_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("dbus") && !l.trim().is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail.join(" | ")
    }
}

/// Wait for `DevToolsActivePort` (Chromium writes the port it bound for
/// `--remote-debugging-port=0` there), connect, and start the task that polls the CDP handler —
/// without it every CDP call hangs.
async fn connect(
    profile: &Path,
    dead: &CancellationToken,
    spec: &Spec,
    tasks: &TaskTracker,
    handler_stop: &CancellationToken,
) -> anyhow::Result<chromiumoxide::Browser> {
    let port_file = profile.join("DevToolsActivePort");
    let ws = loop {
        if let Ok(text) = tokio::fs::read_to_string(&port_file).await {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
        }
        tokio::select! {
            _ = dead.cancelled() => bail!("browser exited during start-up"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    let config = HandlerConfig {
        request_timeout: spec.request_timeout,
        request_intercept: spec.request_intercept,
        ..HandlerConfig::default()
    };
    let (browser, mut handler) = chromiumoxide::Browser::connect_with_config(ws, config).await?;
    let stop = handler_stop.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                ev = handler.next() => match ev {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::trace!(error = %e, "cdp handler"),
                },
            }
        }
    });
    Ok(browser)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::Launcher;

    /// Verification that cannot read `/proc` (here a fixture with an unreadable process; in
    /// production EMFILE) must not pass for "nothing left". Before the fix the scan's error
    /// read as an empty list and this close reported 0 leaks.
    // See: issue 14, item 2.
    #[tokio::test]
    async fn a_close_whose_verification_cannot_read_proc_is_not_clean() {
        let fake_proc = crate::proc::fixture_with_unreadable();
        let owned = Owned::default();
        let launcher = Launcher::start(owned.clone()).expect("launcher");
        let env = Env {
            launcher: launcher.handle().expect("handle"),
            owned,
            procfs: Procfs::new(fake_proc.path()),
            tasks: TaskTracker::new(),
        };
        let mut spec = Spec::new(PathBuf::from("/nonexistent/chromium"));
        spec.verify_deadline = Duration::from_millis(200);
        let browser_dir = tempfile::tempdir().expect("tempdir");
        let dir = browser_dir.path().join("b1");
        std::fs::create_dir(&dir).expect("mkdir");
        // No pidfd, and a pid (hence process group) that no fixture process has: nothing is
        // signalled; only the scans run, against the fixture.
        let report = destroy(4_000_000, 0, None, &dir, &spec, &env, false).await;
        assert!(
            report.leaks() >= 1,
            "an unverified close counts as a leak: {report:?}"
        );
        let why = report.unverified.as_deref().unwrap_or_default();
        assert!(why.contains("could not be read"), "{report:?}");
        assert!(report.leaked_processes.is_empty(), "{report:?}");
        assert!(!dir.exists(), "the directory is still removed");
        drop(env);
        launcher.join();
    }

    /// Chromium reads only the last `--disable-features`: a user's list must not turn ours
    /// back on, and theirs must still be in force.
    #[test]
    fn a_users_disabled_features_are_merged_with_ours() {
        let f = flags(&[
            "--disable-features=Foo, Translate,,Bar".into(),
            "--lang=de".into(),
            "--disable-features=Baz".into(),
        ]);
        let lists: Vec<&String> = f
            .iter()
            .filter(|a| a.starts_with("--disable-features"))
            .collect();
        assert_eq!(lists.len(), 1, "{f:?}");
        let list: Vec<&str> = lists[0]
            .trim_start_matches("--disable-features=")
            .split(',')
            .collect();
        for want in DISABLED_FEATURES
            .iter()
            .copied()
            .chain(["Foo", "Bar", "Baz"])
        {
            assert_eq!(
                list.iter().filter(|g| **g == want).count(),
                1,
                "{want}: {list:?}"
            );
        }
        assert!(f.iter().any(|a| a == "--lang=de"));
        assert!(!f.iter().any(|a| a.trim().is_empty()));
        // Without user flags: the base flags and our list.
        assert_eq!(flags(&[]).len(), BASE_FLAGS.len() + 1);
    }

    /// A run directory exactly as long as the start-up check allows.
    fn longest_allowed_run_dir(abandon_max: Option<u64>) -> PathBuf {
        let budget = MAX_TMPDIR_LEN - longest_tmpdir(Path::new(""), abandon_max);
        PathBuf::from(format!("/{}", "r".repeat(budget - 1)))
    }

    /// Browser ids grow for the life of a run (a service launches one per session): every id
    /// up to [`MAX_BROWSER_ID`] must fit the socket path limit in a run directory the start-up
    /// check accepted. Before the fix the check assumed ids ≤ 99999, so from browser 100000
    /// on, in a run directory at the limit, every browser died at start.
    // See: issue 14, item 11.
    #[test]
    fn every_browser_id_fits_a_run_dir_the_start_check_accepts() {
        let run_dir = longest_allowed_run_dir(None);
        assert_eq!(longest_tmpdir(&run_dir, None), MAX_TMPDIR_LEN);
        for id in [1, 99_999, 100_000, 123_456_789, MAX_BROWSER_ID] {
            let tmp = run_dir.join(format!("b{id}")).join("t");
            assert!(
                tmp.as_os_str().len() <= MAX_TMPDIR_LEN,
                "browser {id}: {} bytes",
                tmp.as_os_str().len()
            );
            assert!(check_tmpdir(&tmp).is_ok());
        }
        // Past the bound a launch is refused, not started to die.
        let tmp = run_dir
            .join(format!("b{}", u128::from(MAX_BROWSER_ID) * 10))
            .join("t");
        let e = check_tmpdir(&tmp).unwrap_err();
        assert!(e.to_string().contains("shorter --run-dir"), "{e}");

        // The `abandon` fault's directories are named after the session index.
        let run_dir = longest_allowed_run_dir(Some(123_456));
        let tmp = PathBuf::from(format!("{}.abandoned-123456/t", run_dir.display()));
        assert!(check_tmpdir(&tmp).is_ok());
        let tmp = run_dir.join(format!("b{MAX_BROWSER_ID}")).join("t");
        assert!(check_tmpdir(&tmp).is_ok());
    }

    #[tokio::test]
    async fn a_launch_with_a_too_long_tmpdir_is_refused_before_spawning() {
        let owned = Owned::default();
        let launcher = Launcher::start(owned.clone()).expect("launcher");
        let env = Env {
            launcher: launcher.handle().expect("handle"),
            owned,
            procfs: Procfs::default(),
            tasks: TaskTracker::new(),
        };
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("x".repeat(MAX_TMPDIR_LEN)).join("b1");
        let spec = Spec::new(PathBuf::from("/nonexistent/chromium"));
        let e = match Browser::launch(1, dir.clone(), &spec, &env, Mode::Owned).await {
            Ok(_) => panic!("launched"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("shorter --run-dir"), "{e}");
        assert!(!dir.exists(), "nothing created");
        drop(env);
        launcher.join();
    }
}
