//! The runner's Prometheus metrics. Built and registered in one place
//! ([`Metrics::register`]); label values come from enums and every child series is fetched
//! once here, so the hot path does no label lookup.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::faults::Fault;

/// How a session ended. One per session, after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Succeeded on the first attempt.
    Ok,
    /// Every attempt failed.
    Failed,
    /// Succeeded after at least one retry.
    Retried,
    /// Every attempt failed and the last one ran out of its session timeout.
    Timeout,
    /// Stopped by shutdown while running.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Retried,
        Outcome::Timeout,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Why a session attempt was run again without spending a retry: the browser under it was lost
/// to something that was not the session's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Collateral {
    /// Another session's injected fault (`kill-browser`) killed the shared browser.
    NeighbourFault,
    /// The browser process died, and not by a fault this attempt injected.
    BrowserDied,
}

impl Collateral {
    pub const ALL: [Collateral; 2] = [Collateral::NeighbourFault, Collateral::BrowserDied];

    pub fn as_str(self) -> &'static str {
        match self {
            Collateral::NeighbourFault => "neighbour_fault",
            Collateral::BrowserDied => "browser_died",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    sessions: [IntCounter; 5],
    pub cleanup_leaks: IntCounter,
    pub cleanup_unverified: IntCounter,
    pub launch_failures: IntCounter,
    pub browsers_launched: IntCounter,
    pub admission_rejections_memory: IntCounter,
    faults: [IntCounter; 5],
    collateral: [IntCounter; 2],
    pub stale_run_dirs_removed: IntCounter,
    pub active_browsers: IntGauge,
    pub active_sessions: IntGauge,
    pub queue_depth: IntGauge,
    pub circuit_state: IntGauge,
    pub tasks_alive: IntGauge,
    pub session_duration: Histogram,
    pub launch_duration: Histogram,
    pub cleanup_duration: Histogram,
    /// The service's warm pool: sessions that found a browser ready, and those that waited for
    /// a launch.
    pub pool_warm_starts: IntCounter,
    pub pool_cold_starts: IntCounter,
    pub pool_ready: IntGauge,
}

/// Seconds; sessions of the default job take about a second, failed ones up to their timeout.
const SESSION_BUCKETS: &[f64] = &[
    0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
const LAUNCH_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0];
const CLEANUP_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0];

impl Metrics {
    pub fn register(registry: Registry) -> prometheus::Result<Self> {
        let sessions_vec = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_sessions_total",
                "Sessions finished, by outcome (ok, failed, retried, timeout, cancelled).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(sessions_vec.clone()))?;
        let sessions = Outcome::ALL.map(|o| sessions_vec.with_label_values(&[o.as_str()]));

        let faults_vec = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_faults_injected_total",
                "Faults injected on purpose (--fault), by fault.",
            ),
            &["fault"],
        )?;
        registry.register(Box::new(faults_vec.clone()))?;
        let faults = Fault::ALL.map(|f| faults_vec.with_label_values(&[f.as_str()]));

        let collateral_vec = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_session_collateral_restarts_total",
                "Session attempts run again without spending a retry because their browser was lost to a cause not their own, by cause (neighbour_fault, browser_died).",
            ),
            &["cause"],
        )?;
        registry.register(Box::new(collateral_vec.clone()))?;
        let collateral = Collateral::ALL.map(|c| collateral_vec.with_label_values(&[c.as_str()]));

        let admission = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_admission_rejections_total",
                "Browser launches postponed because the reserve did not fit, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(admission.clone()))?;

        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> prometheus::Result<Histogram> {
                let h =
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };

        let build_info = IntGaugeVec::new(
            Opts::new(
                "leakwarden_runner_build_info",
                "Always 1; the version label says which runner is running.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let starts = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_pool_starts_total",
                "Service sessions by how they got their browser: warm (launched ahead, ready) or cold (waited for a launch).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(starts.clone()))?;

        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Self {
            sessions,
            cleanup_leaks: counter(
                "leakwarden_runner_cleanup_leaks_total",
                "Processes or directories that cleanup verification found left behind. Should stay 0.",
            )?,
            cleanup_unverified: counter(
                "leakwarden_runner_cleanup_unverified_total",
                "Cleanups whose /proc verification could not read everything (EMFILE, ...): each also counts as a leak. Should stay 0.",
            )?,
            launch_failures: counter(
                "leakwarden_runner_launch_failures_total",
                "Browser launches that failed.",
            )?,
            browsers_launched: counter(
                "leakwarden_runner_browsers_launched_total",
                "Browsers launched successfully.",
            )?,
            admission_rejections_memory: admission.with_label_values(&["memory"]),
            faults,
            collateral,
            stale_run_dirs_removed: counter(
                "leakwarden_runner_stale_run_dirs_removed_total",
                "Directories of dead runs removed at start.",
            )?,
            active_browsers: gauge(
                "leakwarden_runner_active_browsers",
                "Browsers alive (launching, serving or closing).",
            )?,
            active_sessions: gauge(
                "leakwarden_runner_active_sessions",
                "Sessions running now.",
            )?,
            queue_depth: gauge(
                "leakwarden_runner_queue_depth",
                "Sessions waiting to start.",
            )?,
            circuit_state: gauge(
                "leakwarden_runner_circuit_state",
                "Launch circuit breaker: 0 closed, 1 half-open, 2 open.",
            )?,
            tasks_alive: gauge(
                "leakwarden_runner_tasks_alive",
                "Tokio tasks alive in the runner (a growing value is a task leak).",
            )?,
            session_duration: histogram(
                "leakwarden_runner_session_duration_seconds",
                "Duration of a session attempt, from waiting for a browser to its context being closed.",
                SESSION_BUCKETS,
            )?,
            launch_duration: histogram(
                "leakwarden_runner_launch_duration_seconds",
                "From spawning a browser to its CDP connection being ready.",
                LAUNCH_BUCKETS,
            )?,
            cleanup_duration: histogram(
                "leakwarden_runner_cleanup_duration_seconds",
                "Closing a browser: CDP close, signals, reaping, verification, directory removal.",
                CLEANUP_BUCKETS,
            )?,
            pool_warm_starts: starts.with_label_values(&["warm"]),
            pool_cold_starts: starts.with_label_values(&["cold"]),
            pool_ready: gauge(
                "leakwarden_runner_pool_ready_browsers",
                "Service browsers launched ahead and waiting for a session.",
            )?,
            registry,
        })
    }

    pub fn session(&self, o: Outcome) -> &IntCounter {
        &self.sessions[o as usize]
    }

    pub fn fault(&self, f: Fault) -> &IntCounter {
        &self.faults[f as usize]
    }

    pub fn collateral(&self, c: Collateral) -> &IntCounter {
        &self.collateral[c as usize]
    }

    /// Text exposition format; refreshes the gauges that are sampled, not pushed.
    pub fn render(&self) -> String {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            self.tasks_alive.set(h.metrics().num_alive_tasks() as i64);
        }
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exported() {
        let m = Metrics::register(Registry::new()).unwrap();
        m.session(Outcome::Ok).inc();
        m.fault(Fault::Crash).inc();
        m.admission_rejections_memory.inc();
        m.session_duration.observe(1.0);
        let text = m.render();
        for name in [
            "leakwarden_runner_sessions_total{outcome=\"ok\"} 1",
            "leakwarden_runner_sessions_total{outcome=\"cancelled\"} 0",
            "leakwarden_runner_cleanup_leaks_total 0",
            "leakwarden_runner_cleanup_unverified_total 0",
            "leakwarden_runner_launch_failures_total 0",
            "leakwarden_runner_admission_rejections_total{reason=\"memory\"} 1",
            "leakwarden_runner_faults_injected_total{fault=\"crash\"} 1",
            "leakwarden_runner_session_collateral_restarts_total{cause=\"neighbour_fault\"} 0",
            "leakwarden_runner_session_collateral_restarts_total{cause=\"browser_died\"} 0",
            "leakwarden_runner_active_browsers 0",
            "leakwarden_runner_active_sessions 0",
            "leakwarden_runner_queue_depth 0",
            "leakwarden_runner_circuit_state 0",
            "leakwarden_runner_tasks_alive",
            "leakwarden_runner_build_info{version=",
            "leakwarden_runner_session_duration_seconds_bucket",
            "leakwarden_runner_launch_duration_seconds_count",
            "leakwarden_runner_cleanup_duration_seconds_sum",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
