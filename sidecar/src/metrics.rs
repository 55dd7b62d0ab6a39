//! The sidecar's Prometheus metrics. Built and registered in one place ([`Metrics::register`]);
//! label values come from enums and family names (bounded by the policy): never a pid or a
//! command line. Gauges are set from each [`Analysis`]; `/metrics` serves a text rendering made on
//! a background timer, so a scrape never scans.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use leakwarden_core::http::Stats;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::analysis::Analysis;
use crate::kill::Outcome;

/// Every metric the sidecar exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    processes: IntGaugeVec,
    orphan_processes: IntGaugeVec,
    zombie_processes: IntGauge,
    family_rss: IntGaugeVec,
    family_fds: IntGaugeVec,
    family_threads: IntGaugeVec,
    leak_suspects: IntGaugeVec,
    leak_ttl: GaugeVec,
    family_growing: IntGaugeVec,
    trees: IntGaugeVec,
    orphan_trees: IntGaugeVec,
    oldest_orphan: GaugeVec,
    fd_ratio_max: GaugeVec,
    pod_processes: IntGaugeVec,
    pod_orphans: IntGaugeVec,
    pod_rss: IntGaugeVec,
    pub stale_dirs: IntGauge,
    pub policy_ok: IntGauge,
    last_scan: Gauge,
    pub kills: IntCounterVec,
    pub scans: IntCounter,
    pub scan_failures: IntCounter,
    pub skipped: IntCounterVec,
    pub reloads: IntCounterVec,
    pub stale_removed: IntCounterVec,
    pub scan_duration: Histogram,
    pub zombies_reaped: IntCounter,
    /// The HTTP front end's counters: hand them to the server ([`crate::http::State::new`]);
    /// they are exported as `leakwarden_http_*`, read at each rendering.
    pub http: Arc<Stats>,
    /// The daemon's own state (see `watch.rs`).
    pub daemon: DaemonMetrics,
}

/// What the `watch` loop reports about itself.
#[derive(Clone)]
pub struct DaemonMetrics {
    /// 1 while nothing is signalled or removed (`--dry-run` or the policy's `dry_run`).
    pub dry_run: IntGauge,
    /// Tree owners watched through a pidfd (an exit triggers a rescan at once).
    pub owners_watched: IntGauge,
    /// Owners not watched (the pidfd budget is spent): their trees are seen at the next scan.
    pub owners_unwatched: IntGauge,
    /// Scans or stale-directory runs that overran their deadline and were left behind.
    pub deadline_exceeded: IntCounterVec,
}

impl DaemonMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        let g = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let d = DaemonMetrics {
            dry_run: g(
                "leakwarden_policy_dry_run",
                "1 while the sidecar signals and removes nothing (--dry-run or the policy's dry_run).",
            )?,
            owners_watched: g(
                "leakwarden_owners_watched",
                "Owners (launchers) of trees watched through a pidfd: their exit triggers a rescan at once.",
            )?,
            owners_unwatched: g(
                "leakwarden_owners_unwatched",
                "Owners not watched because the pidfd budget (a share of RLIMIT_NOFILE) is spent; their trees are judged at the next scan.",
            )?,
            deadline_exceeded: cv(
                r,
                "leakwarden_deadline_exceeded_total",
                "Work that overran its deadline and was left behind, by task (scan, stale_dirs).",
                &["task"],
            )?,
        };
        for t in ["scan", "stale_dirs"] {
            d.deadline_exceeded.with_label_values(&[t]);
        }
        Ok(d)
    }
}

fn gv(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}
fn fgv(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}
fn cv(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Create and register every metric (plus `process_*` for the sidecar itself).
    pub fn register(registry: Registry) -> prometheus::Result<Self> {
        let r = &registry;
        let zombie_processes = IntGauge::new(
            "leakwarden_zombie_processes",
            "Zombie processes (exited, not reaped by their parent).",
        )?;
        r.register(Box::new(zombie_processes.clone()))?;
        let stale_dirs = IntGauge::new(
            "leakwarden_stale_profile_dirs",
            "Browser profile/scratch directories no live process uses, older than the policy's threshold.",
        )?;
        r.register(Box::new(stale_dirs.clone()))?;
        let policy_ok = IntGauge::new(
            "leakwarden_policy_last_reload_success",
            "1 if the last policy (re)load succeeded, 0 if it was rejected and the previous policy stays in force.",
        )?;
        r.register(Box::new(policy_ok.clone()))?;
        let last_scan = Gauge::new(
            "leakwarden_last_scan_timestamp_seconds",
            "Unix time of the last completed scan.",
        )?;
        r.register(Box::new(last_scan.clone()))?;
        let scans = IntCounter::new("leakwarden_scans_total", "Completed scans of /proc.")?;
        r.register(Box::new(scans.clone()))?;
        let scan_failures = IntCounter::new(
            "leakwarden_scan_failures_total",
            "Scans that failed as a whole (e.g. /proc unreadable).",
        )?;
        r.register(Box::new(scan_failures.clone()))?;
        let zombies_reaped = IntCounter::new(
            "leakwarden_zombies_reaped_total",
            "Zombies reaped by the sidecar as PID 1 or child subreaper.",
        )?;
        r.register(Box::new(zombies_reaped.clone()))?;
        let scan_duration = Histogram::with_opts(
            HistogramOpts::new(
                "leakwarden_scan_duration_seconds",
                "Time to scan /proc and analyse the snapshot.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        r.register(Box::new(scan_duration.clone()))?;
        let build = IntGaugeVec::new(
            Opts::new("leakwarden_build_info", "Build information; always 1."),
            &["version"],
        )?;
        r.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let http = Arc::new(Stats::default());
        r.register(Box::new(HttpCollector::new(http.clone())?))?;
        Ok(Metrics {
            processes: gv(r, "leakwarden_processes", "Processes per family.", &["family"])?,
            orphan_processes: gv(
                r,
                "leakwarden_orphan_processes",
                "Family processes in orphaned trees (their launcher is gone).",
                &["family"],
            )?,
            zombie_processes,
            family_rss: gv(
                r,
                "leakwarden_family_resident_memory_bytes",
                "Resident memory of all processes of a family.",
                &["family"],
            )?,
            family_fds: gv(
                r,
                "leakwarden_family_open_fds",
                "Open file descriptors of all processes of a family.",
                &["family"],
            )?,
            family_threads: gv(
                r,
                "leakwarden_family_threads",
                "Threads of all processes of a family.",
                &["family"],
            )?,
            leak_suspects: gv(
                r,
                "leakwarden_leak_suspects",
                "Trees whose resource use the leak detector judges growing.",
                &["family", "resource"],
            )?,
            leak_ttl: fgv(
                r,
                "leakwarden_leak_time_to_limit_seconds",
                "Shortest projected time until a growing tree reaches its limit (cgroup memory.max or host memory; RLIMIT_NOFILE).",
                &["family", "resource"],
            )?,
            family_growing: gv(
                r,
                "leakwarden_family_growing",
                "1 if a family's total use of a resource is judged growing.",
                &["family", "resource"],
            )?,
            trees: gv(r, "leakwarden_trees", "Process trees per family (a browser with its helpers, a driver with its browsers).", &["family"])?,
            orphan_trees: gv(r, "leakwarden_orphan_trees", "Orphaned trees per family.", &["family"])?,
            oldest_orphan: fgv(
                r,
                "leakwarden_oldest_orphan_age_seconds",
                "How long the longest-orphaned tree of a family has been orphaned.",
                &["family"],
            )?,
            fd_ratio_max: fgv(
                r,
                "leakwarden_fd_limit_ratio_max",
                "Highest ratio of open FDs to the soft RLIMIT_NOFILE among a family's processes.",
                &["family"],
            )?,
            pod_processes: gv(r, "leakwarden_pod_processes", "Family processes per pod (node mode).", &["pod_uid", "family"])?,
            pod_orphans: gv(r, "leakwarden_pod_orphan_processes", "Orphaned family processes per pod (node mode).", &["pod_uid", "family"])?,
            pod_rss: gv(r, "leakwarden_pod_resident_memory_bytes", "Resident memory of family processes per pod (node mode).", &["pod_uid", "family"])?,
            stale_dirs,
            policy_ok,
            last_scan,
            kills: cv(
                r,
                "leakwarden_kills_total",
                "Kill decisions per rule and outcome (killed, terminated, skipped, dry_run, rate_limited, failed, protected).",
                &["rule", "outcome"],
            )?,
            scans,
            scan_failures,
            skipped: cv(
                r,
                "leakwarden_skipped_processes_total",
                "Processes skipped during scans, by reason (vanished, permission_denied, malformed, io_error, blocked: a read that did not finish in time); fds_unreadable counts processes kept without an FD count.",
                &["reason"],
            )?,
            reloads: cv(
                r,
                "leakwarden_policy_reloads_total",
                "Policy reloads by outcome (success, rejected).",
                &["outcome"],
            )?,
            stale_removed: cv(
                r,
                "leakwarden_stale_dirs_removed_total",
                "Stale profile directories removed, by outcome (removed, failed).",
                &["outcome"],
            )?,
            scan_duration,
            zombies_reaped,
            daemon: DaemonMetrics::register(r)?,
            http,
            registry,
        })
    }

    /// Set every gauge from one analysis.
    pub fn observe(&self, a: &Analysis) {
        let s = &a.snapshot;
        for g in [
            &self.processes,
            &self.orphan_processes,
            &self.family_rss,
            &self.family_fds,
            &self.family_threads,
            &self.trees,
            &self.orphan_trees,
            &self.leak_suspects,
            &self.family_growing,
            &self.pod_processes,
            &self.pod_orphans,
            &self.pod_rss,
        ] {
            g.reset();
        }
        self.leak_ttl.reset();
        self.oldest_orphan.reset();
        self.fd_ratio_max.reset();
        for f in &a.families {
            let l = [f.name.as_str()];
            self.processes.with_label_values(&l).set(f.processes as i64);
            self.orphan_processes
                .with_label_values(&l)
                .set(f.orphans as i64);
            self.family_rss
                .with_label_values(&l)
                .set(f.rss_bytes as i64);
            // Every member's FD count unreadable: the total is unknown, not 0 — no sample.
            if f.processes == 0 || f.fds_unknown < f.processes {
                self.family_fds.with_label_values(&l).set(f.fds as i64);
            }
            self.family_threads
                .with_label_values(&l)
                .set(f.threads as i64);
            self.trees.with_label_values(&l).set(f.trees as i64);
            self.orphan_trees
                .with_label_values(&l)
                .set(f.orphan_trees as i64);
            self.oldest_orphan
                .with_label_values(&l)
                .set(f.oldest_orphan_age_seconds);
            self.fd_ratio_max
                .with_label_values(&l)
                .set(f.fd_limit_ratio_max);
            for (r, n) in &f.leak_suspects {
                self.leak_suspects
                    .with_label_values(&[f.name.as_str(), r])
                    .set(*n as i64);
            }
            for (r, g) in &f.growing {
                self.family_growing
                    .with_label_values(&[f.name.as_str(), r])
                    .set(i64::from(*g));
            }
            for (r, t) in &f.time_to_limit_seconds {
                if t.is_finite() {
                    self.leak_ttl
                        .with_label_values(&[f.name.as_str(), r])
                        .set(*t);
                }
            }
        }
        for ((uid, fam), p) in &a.pods {
            let l = [uid.as_str(), fam.as_str()];
            self.pod_processes
                .with_label_values(&l)
                .set(p.processes as i64);
            self.pod_orphans.with_label_values(&l).set(p.orphans as i64);
            self.pod_rss.with_label_values(&l).set(p.rss_bytes as i64);
        }
        self.zombie_processes.set(a.zombies_total as i64);
        for (reason, n) in s.skipped.by_reason() {
            // Touch every reason so the series exist from the first scrape.
            self.skipped.with_label_values(&[reason]).inc_by(n);
        }
        self.scans.inc();
        self.scan_duration.observe(s.duration.as_secs_f64());
        let ts = s
            .taken_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_scan.set(ts);
    }

    /// Count a kill decision.
    pub fn kill(&self, rule: &str, outcome: &Outcome) {
        self.kills.with_label_values(&[rule, outcome.label()]).inc();
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        buf
    }
}

// === impl HttpCollector ===

/// The front end counts in atomics of its own ([`Stats`]); this reads them when the registry is
/// gathered, so the hot path (accepting a connection) never touches a metric.
struct HttpCollector {
    stats: Arc<Stats>,
    descs: Vec<Desc>,
}

/// Name, help and type of each exported front-end counter, in [`HttpCollector::values`] order.
const HTTP_METRICS: [(&str, &str, MetricType); 4] = [
    (
        "leakwarden_http_connections_open",
        "Connections the HTTP server (/metrics, probes) holds open now.",
        MetricType::GAUGE,
    ),
    (
        "leakwarden_http_connections_evicted_total",
        "Quiet idle connections the HTTP server closed to make room for a new one at its cap.",
        MetricType::COUNTER,
    ),
    (
        "leakwarden_http_connections_refused_total",
        "New connections the HTTP server turned away because every open one was busy.",
        MetricType::COUNTER,
    ),
    (
        "leakwarden_http_accept_errors_total",
        "Failed accepts (EMFILE and friends: the server then backs off).",
        MetricType::COUNTER,
    ),
];

impl HttpCollector {
    fn new(stats: Arc<Stats>) -> prometheus::Result<Self> {
        let descs = HTTP_METRICS
            .iter()
            .map(|(name, help, _)| {
                Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new())
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(HttpCollector { stats, descs })
    }

    fn values(&self) -> [f64; 4] {
        let s = &self.stats;
        [
            s.open.load(Ordering::Relaxed) as f64,
            s.evicted.load(Ordering::Relaxed) as f64,
            s.refused.load(Ordering::Relaxed) as f64,
            s.accept_errors.load(Ordering::Relaxed) as f64,
        ]
    }
}

impl Collector for HttpCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        HTTP_METRICS
            .iter()
            .zip(self.values())
            .map(|((name, help, kind), v)| {
                let mut m = proto::Metric::default();
                match kind {
                    MetricType::COUNTER => {
                        let mut c = proto::Counter::default();
                        c.set_value(v);
                        m.set_counter(c);
                    }
                    _ => {
                        let mut g = proto::Gauge::default();
                        g.set_value(v);
                        m.set_gauge(g);
                    }
                }
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(*kind);
                f.set_metric(vec![m]);
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_front_end_counters_are_read_at_render_time() {
        let m = Metrics::register(Registry::new()).expect("register");
        let before = String::from_utf8(m.render()).expect("utf8");
        assert!(
            before.contains("\nleakwarden_http_connections_open 0\n"),
            "{before}"
        );
        m.http.open.store(7, Ordering::Relaxed);
        m.http.evicted.store(3, Ordering::Relaxed);
        m.http.refused.store(2, Ordering::Relaxed);
        m.http.accept_errors.store(1, Ordering::Relaxed);
        let text = String::from_utf8(m.render()).expect("utf8");
        for line in [
            "# TYPE leakwarden_http_connections_open gauge",
            "leakwarden_http_connections_open 7",
            "# TYPE leakwarden_http_connections_evicted_total counter",
            "leakwarden_http_connections_evicted_total 3",
            "# TYPE leakwarden_http_connections_refused_total counter",
            "leakwarden_http_connections_refused_total 2",
            "# TYPE leakwarden_http_accept_errors_total counter",
            "leakwarden_http_accept_errors_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
    }

    #[test]
    fn registers_and_renders_contract_names() {
        let m = Metrics::register(Registry::new()).expect("register");
        m.kill("orphaned-browser-tree", &Outcome::Killed);
        m.reloads.with_label_values(&["success"]).inc();
        let text = String::from_utf8(m.render()).expect("utf8");
        for name in [
            "leakwarden_zombie_processes",
            "leakwarden_kills_total",
            "leakwarden_scan_duration_seconds_bucket",
            "leakwarden_build_info",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
