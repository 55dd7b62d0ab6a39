//! What a run did: the live progress line, the summary table at the end, and the same as JSON
//! (`--summary-json`) for tests and scripts.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::faults::Fault;
use crate::metrics::Outcome;
use crate::pool::PoolStats;

#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    pub index: u64,
    pub outcome: Outcome,
    /// Attempts charged to the session: the first and each retry it spent.
    pub attempts: u32,
    /// Attempts run again because their browser was lost to a cause not the session's own
    /// (another session's fault, a browser that died): no retry spent. Bounded.
    pub collateral_restarts: u32,
    pub duration_ms: u64,
    pub faults: Vec<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What each `evaluate` step returned, in the attempt that decided the outcome.
    pub values: Vec<crate::session::StepValue>,
    /// Every run of the session in order: attempts and collateral restarts.
    pub runs: Vec<RunRecord>,
}

/// One run of a session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunRecord {
    /// `b<N>`: a browser of the pool; `detached`: the `abandon` fault's own browser. Absent
    /// when the run got no browser.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the run was lost to a cause not the session's own (then it cost no retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral: Option<crate::metrics::Collateral>,
}

/// Shared, append-only record of finished sessions, with the count of each outcome kept as
/// they land: the progress line and a job's status read the counts, not a copy of every
/// record (which, every 500 ms on a terminal, cost time in proportion to the sessions run).
#[derive(Debug, Default, Clone)]
pub struct Records(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    all: Vec<SessionRecord>,
    tally: Tally,
}

/// How many sessions have finished, in all and by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub finished: u64,
    by_outcome: [u64; Outcome::ALL.len()],
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        self.finished += 1;
        if let Some(i) = Outcome::ALL.iter().position(|&x| x == o) {
            self.by_outcome[i] += 1;
        }
    }

    pub fn get(&self, o: Outcome) -> u64 {
        Outcome::ALL
            .iter()
            .position(|&x| x == o)
            .map_or(0, |i| self.by_outcome[i])
    }

    /// Every outcome's count, zeros included, by name.
    pub fn by_name(&self) -> BTreeMap<&'static str, u64> {
        Outcome::ALL
            .iter()
            .map(|&o| (o.as_str(), self.get(o)))
            .collect()
    }
}

impl Records {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, r: SessionRecord) {
        let mut g = self.lock();
        g.tally.add(r.outcome);
        g.all.push(r);
    }

    pub fn snapshot(&self) -> Vec<SessionRecord> {
        self.lock().all.clone()
    }

    /// The counts alone: no record is copied.
    pub fn tally(&self) -> Tally {
        self.lock().tally
    }

    /// Every record and the counts, read together.
    pub fn snapshot_with_tally(&self) -> (Vec<SessionRecord>, Tally) {
        let g = self.lock();
        (g.all.clone(), g.tally)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Durations {
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub max_ms: u64,
    pub mean_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cleanup {
    pub browsers_closed: u64,
    pub processes_signalled: u64,
    pub leaked_processes: u64,
    pub dirs_left: u64,
    /// Browser closes whose verification could not read /proc (EMFILE, …): not proven clean.
    pub unverified: u64,
    /// Everything verification found left (processes + directories), plus every unverified
    /// close, as counted in `leakwarden_runner_cleanup_leaks_total`.
    pub leaks: u64,
    pub stale_run_dirs_removed: u64,
    pub run_dir_removed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job: String,
    pub run_dir: String,
    pub sessions_planned: u64,
    pub sessions: BTreeMap<&'static str, u64>,
    pub not_started: u64,
    pub attempts: u64,
    /// Sum of the sessions' `collateral_restarts`.
    pub collateral_restarts: u64,
    pub concurrency: usize,
    pub wall_seconds: f64,
    pub sessions_per_minute: f64,
    pub durations: Durations,
    pub browsers_launched: u64,
    pub launch_failures: u64,
    pub faults_injected: BTreeMap<&'static str, u64>,
    pub cleanup: Cleanup,
    pub interrupted: bool,
    /// `run` only: CPU time of the runner's own process (every thread, not its browsers) from
    /// its start to this summary — what the runner itself costs beside Chromium. Absent from a
    /// service job's summary (the service's process is shared by every job and connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_cpu_seconds: Option<f64>,
    pub records: Vec<SessionRecord>,
}

/// CPU time of this process so far (`CLOCK_PROCESS_CPUTIME_ID`: all threads; no children).
pub fn own_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    job: &str,
    run_dir: &str,
    planned: u64,
    concurrency: usize,
    wall: Duration,
    mut records: Vec<SessionRecord>,
    pool: PoolStats,
    extra_leaks: u64,
    stale_removed: u64,
    run_dir_removed: bool,
    interrupted: bool,
) -> Summary {
    records.sort_by_key(|r| r.index);
    let mut sessions: BTreeMap<&'static str, u64> =
        Outcome::ALL.iter().map(|o| (o.as_str(), 0)).collect();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in &records {
        *sessions.entry(r.outcome.as_str()).or_default() += 1;
        for f in &r.faults {
            *faults.entry(f.as_str()).or_default() += 1;
        }
    }
    let mut ds: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ok | Outcome::Retried))
        .map(|r| r.duration_ms)
        .collect();
    ds.sort_unstable();
    let mean = if ds.is_empty() {
        0
    } else {
        ds.iter().sum::<u64>() / ds.len() as u64
    };
    let done = sessions["ok"] + sessions["retried"];
    let secs = wall.as_secs_f64();
    let leaked_processes = pool.leaked_processes + extra_leaks;
    Summary {
        job: job.to_string(),
        run_dir: run_dir.to_string(),
        sessions_planned: planned,
        not_started: planned.saturating_sub(records.len() as u64),
        attempts: records.iter().map(|r| u64::from(r.attempts)).sum(),
        collateral_restarts: records
            .iter()
            .map(|r| u64::from(r.collateral_restarts))
            .sum(),
        sessions,
        concurrency,
        wall_seconds: secs,
        sessions_per_minute: if secs > 0.0 {
            done as f64 * 60.0 / secs
        } else {
            0.0
        },
        durations: Durations {
            p50_ms: percentile(&ds, 50.0),
            p95_ms: percentile(&ds, 95.0),
            max_ms: ds.last().copied().unwrap_or(0),
            mean_ms: mean,
        },
        browsers_launched: pool.browsers_launched,
        launch_failures: pool.launch_failures,
        faults_injected: faults,
        cleanup: Cleanup {
            browsers_closed: pool.browsers_closed,
            processes_signalled: pool.processes_signalled,
            leaked_processes,
            dirs_left: pool.dirs_left,
            unverified: pool.unverified,
            leaks: leaked_processes
                + pool.dirs_left
                + pool.unverified
                + u64::from(!run_dir_removed),
            stale_run_dirs_removed: stale_removed,
            run_dir_removed,
        },
        interrupted,
        runner_cpu_seconds: None,
        records,
    }
}

impl Summary {
    pub fn table(&self) -> String {
        let s = &self.sessions;
        let mut out = String::new();
        out.push_str(&format!(
            "leakwarden-runner: job `{}`, {} of {} sessions in {:.1} s at concurrency {} ({:.1} sessions/min){}\n",
            self.job,
            self.records.len(),
            self.sessions_planned,
            self.wall_seconds,
            self.concurrency,
            self.sessions_per_minute,
            if self.interrupted { ", interrupted" } else { "" }
        ));
        let mut rows: Vec<(String, String)> = vec![
            ("sessions ok".into(), s["ok"].to_string()),
            (
                "sessions retried (ok after retry)".into(),
                s["retried"].to_string(),
            ),
            ("sessions failed".into(), s["failed"].to_string()),
            ("sessions timed out".into(), s["timeout"].to_string()),
            ("sessions cancelled".into(), s["cancelled"].to_string()),
            ("sessions not started".into(), self.not_started.to_string()),
            (
                "collateral restarts (no retry spent)".into(),
                self.collateral_restarts.to_string(),
            ),
            (
                "duration p50 / p95 / max".into(),
                format!(
                    "{} / {} / {} ms",
                    self.durations.p50_ms, self.durations.p95_ms, self.durations.max_ms
                ),
            ),
            (
                "browsers launched / closed".into(),
                format!(
                    "{} / {}",
                    self.browsers_launched, self.cleanup.browsers_closed
                ),
            ),
            ("launch failures".into(), self.launch_failures.to_string()),
            (
                "faults injected".into(),
                if self.faults_injected.is_empty() {
                    "none".into()
                } else {
                    self.faults_injected
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            (
                "cleanup: processes signalled".into(),
                self.cleanup.processes_signalled.to_string(),
            ),
            (
                "cleanup: leaks (processes + dirs)".into(),
                if self.cleanup.unverified > 0 {
                    format!(
                        "{} ({} unverified: /proc unreadable)",
                        self.cleanup.leaks, self.cleanup.unverified
                    )
                } else {
                    self.cleanup.leaks.to_string()
                },
            ),
            (
                "stale run dirs removed at start".into(),
                self.cleanup.stale_run_dirs_removed.to_string(),
            ),
        ];
        if let Some(cpu) = self.runner_cpu_seconds {
            rows.push((
                "runner's own CPU".into(),
                format!(
                    "{cpu:.2} s ({:.1} ms per session)",
                    cpu * 1e3 / (self.records.len().max(1) as f64)
                ),
            ));
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            out.push_str(&format!("  {k:<w$}  {v}\n"));
        }
        out
    }
}

/// Prints a progress line until `stop`: rewritten in place on a terminal, every 10 s otherwise.
pub async fn progress(
    records: Records,
    planned: u64,
    metrics: Arc<crate::metrics::Metrics>,
    started: Instant,
    stop: CancellationToken,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = records.tally();
        let count = |o: Outcome| t.get(o);
        let done = count(Outcome::Ok) + count(Outcome::Retried);
        let rate = done as f64 * 60.0 / started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "[{}/{}] ok {} retried {} failed {} · {} active · {} browsers · {:.1} sessions/min",
            t.finished,
            planned,
            count(Outcome::Ok),
            count(Outcome::Retried),
            count(Outcome::Failed) + count(Outcome::Timeout),
            metrics.active_sessions.get(),
            metrics.active_browsers.get(),
            rate
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 95.0), 95);
        assert_eq!(percentile(&[7], 95.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    fn rec(index: u64, outcome: Outcome, duration_ms: u64) -> SessionRecord {
        SessionRecord {
            index,
            outcome,
            attempts: 1,
            collateral_restarts: u32::from(index == 1),
            duration_ms,
            faults: vec![],
            error: None,
            values: vec![],
            runs: vec![],
        }
    }

    /// The counts kept as records land are the counts of the records, for every outcome, and
    /// read together with them they agree.
    #[test]
    fn the_tally_counts_what_the_records_hold() {
        let records = Records::default();
        assert_eq!(records.tally(), Tally::default());
        let outcomes = [
            Outcome::Ok,
            Outcome::Failed,
            Outcome::Ok,
            Outcome::Timeout,
            Outcome::Retried,
            Outcome::Cancelled,
            Outcome::Ok,
        ];
        for (i, &o) in outcomes.iter().enumerate() {
            records.push(rec(i as u64, o, 10));
        }
        let (all, t) = records.snapshot_with_tally();
        assert_eq!(t, records.tally());
        assert_eq!(t.finished, all.len() as u64);
        for o in Outcome::ALL {
            let n = all.iter().filter(|r| r.outcome == o).count() as u64;
            assert_eq!(t.get(o), n, "{o:?}");
            assert_eq!(t.by_name()[o.as_str()], n, "{o:?}");
        }
        assert_eq!(t.get(Outcome::Ok), 3);
        assert_eq!(t.by_name().len(), Outcome::ALL.len());
    }

    #[test]
    fn summary_counts_outcomes_and_leaks() {
        let s = build(
            "j",
            "/tmp/x",
            4,
            2,
            Duration::from_secs(60),
            vec![
                rec(1, Outcome::Ok, 100),
                rec(0, Outcome::Retried, 300),
                rec(2, Outcome::Failed, 9000),
            ],
            PoolStats {
                browsers_launched: 2,
                dirs_left: 1,
                ..PoolStats::default()
            },
            0,
            0,
            true,
            false,
        );
        assert_eq!(s.sessions["ok"], 1);
        assert_eq!(s.sessions["retried"], 1);
        assert_eq!(s.sessions["failed"], 1);
        assert_eq!(s.not_started, 1);
        assert_eq!(s.sessions_per_minute, 2.0);
        assert_eq!(s.durations.p50_ms, 100);
        assert_eq!(s.cleanup.leaks, 1);
        assert_eq!(s.collateral_restarts, 1);
        assert_eq!(s.records[0].index, 0);
        assert!(s.table().contains("sessions failed"));
    }
}
