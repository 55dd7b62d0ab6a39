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

/// Shared, append-only record of finished sessions, with what the summary needs kept as they
/// land (the count of each outcome, attempts, faults, the successful sessions' durations): the
/// progress line and a job's status read the counts, not a copy of every record (which, every
/// 500 ms on a terminal, cost time in proportion to the sessions run).
///
/// The records themselves (~1 KB a session: runs, errors, `evaluate` values) are kept only where
/// something will show them — a service job's status and summary, `run --summary-json`. A
/// [`Records::counts_only`] keeps the aggregate alone: 8 bytes a successful session, so a
/// `run` of a million sessions holds megabytes, not a gigabyte.
#[derive(Debug, Clone)]
pub struct Records(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    keep: bool,
    all: Vec<SessionRecord>,
    agg: Aggregate,
}

impl Default for Records {
    fn default() -> Self {
        Self::new(true)
    }
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

/// What a summary says of the sessions, gathered as each one lands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub tally: Tally,
    /// Sum of the sessions' `attempts`.
    pub attempts: u64,
    /// Sum of the sessions' `collateral_restarts`.
    pub collateral_restarts: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Durations of the sessions that succeeded (ok, retried), in landing order.
    pub ok_durations_ms: Vec<u64>,
}

impl Aggregate {
    fn add(&mut self, r: &SessionRecord) {
        self.tally.add(r.outcome);
        self.attempts += u64::from(r.attempts);
        self.collateral_restarts += u64::from(r.collateral_restarts);
        for f in &r.faults {
            *self.faults.entry(f.as_str()).or_default() += 1;
        }
        if matches!(r.outcome, Outcome::Ok | Outcome::Retried) {
            self.ok_durations_ms.push(r.duration_ms);
        }
    }
}

impl Records {
    fn new(keep: bool) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            keep,
            all: Vec::new(),
            agg: Aggregate::default(),
        })))
    }

    /// Keeps what the summary counts, and no session's record.
    pub fn counts_only() -> Self {
        Self::new(false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, r: SessionRecord) {
        let mut g = self.lock();
        g.agg.add(&r);
        if g.keep {
            g.all.push(r);
        }
    }

    /// The records kept (none for [`Records::counts_only`]) and the aggregate, taken out
    /// for the summary (the run is over: no copy).
    pub fn take(&self) -> (Vec<SessionRecord>, Aggregate) {
        let mut g = self.lock();
        (std::mem::take(&mut g.all), std::mem::take(&mut g.agg))
    }

    /// The counts alone: no record is copied.
    pub fn tally(&self) -> Tally {
        self.lock().agg.tally
    }

    /// Every record kept and the counts, read together.
    pub fn snapshot_with_tally(&self) -> (Vec<SessionRecord>, Tally) {
        let g = self.lock();
        (g.all.clone(), g.agg.tally)
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
    /// Every session's record, by index; empty where none was kept ([`Records::counts_only`]:
    /// a `run` without `--summary-json`).
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
    (mut records, agg): (Vec<SessionRecord>, Aggregate),
    pool: PoolStats,
    extra_leaks: u64,
    stale_removed: u64,
    run_dir_removed: bool,
    interrupted: bool,
) -> Summary {
    records.sort_by_key(|r| r.index);
    let sessions = agg.tally.by_name();
    let mut ds = agg.ok_durations_ms;
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
        not_started: planned.saturating_sub(agg.tally.finished),
        attempts: agg.attempts,
        collateral_restarts: agg.collateral_restarts,
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
        faults_injected: agg.faults,
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
    /// Sessions that finished, whatever their outcome.
    pub fn finished(&self) -> u64 {
        self.sessions.values().sum()
    }

    pub fn table(&self) -> String {
        let s = &self.sessions;
        let mut out = String::new();
        out.push_str(&format!(
            "leakwarden-runner: job `{}`, {} of {} sessions in {:.1} s at concurrency {} ({:.1} sessions/min){}\n",
            self.job,
            self.finished(),
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
                    cpu * 1e3 / (self.finished().max(1) as f64)
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
    use proptest::prelude::*;

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

    fn collected(recs: Vec<SessionRecord>) -> (Vec<SessionRecord>, Aggregate) {
        let r = Records::default();
        for x in recs {
            r.push(x);
        }
        r.take()
    }

    #[test]
    fn summary_counts_outcomes_and_leaks() {
        let s = build(
            "j",
            "/tmp/x",
            4,
            2,
            Duration::from_secs(60),
            collected(vec![
                rec(1, Outcome::Ok, 100),
                rec(0, Outcome::Retried, 300),
                rec(2, Outcome::Failed, 9000),
            ]),
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
        assert!(s.table().contains("3 of 4 sessions"), "{}", s.table());
    }

    /// A `run` without `--summary-json` keeps no session's record (they were ~1 KB each, held
    /// to the run's end: a million sessions held a gigabyte to print a table of counts).
    #[test]
    fn a_counts_only_run_keeps_no_record() {
        let r = Records::counts_only();
        for i in 0..10_000 {
            let mut x = rec(i, Outcome::Ok, i);
            x.error = Some("a long error message ".repeat(20));
            x.runs = vec![RunRecord::default(); 3];
            r.push(x);
        }
        let (all, agg) = r.take();
        assert!(all.is_empty(), "kept {} records", all.len());
        assert!(r.snapshot_with_tally().0.is_empty());
        assert_eq!(agg.tally.finished, 10_000);
        assert_eq!(agg.ok_durations_ms.len(), 10_000);
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        proptest::sample::select(Outcome::ALL.to_vec())
    }

    fn record() -> impl Strategy<Value = SessionRecord> {
        (
            outcome(),
            0u32..5,
            0u32..4,
            0u64..100_000,
            proptest::collection::vec(proptest::sample::select(Fault::ALL.to_vec()), 0..3),
        )
            .prop_map(
                |(outcome, attempts, collateral_restarts, duration_ms, faults)| SessionRecord {
                    index: 0,
                    outcome,
                    attempts,
                    collateral_restarts,
                    duration_ms,
                    faults,
                    error: None,
                    values: vec![],
                    runs: vec![],
                },
            )
    }

    proptest! {
        /// Whatever the sessions, a summary of counts alone says what a summary of every
        /// record says — and both say what the records themselves hold.
        #[test]
        fn counts_only_summarises_as_the_records_do(
            mut recs in proptest::collection::vec(record(), 0..60),
            planned_extra in 0u64..5,
        ) {
            for (i, r) in recs.iter_mut().enumerate() {
                r.index = i as u64;
            }
            let planned = recs.len() as u64 + planned_extra;
            let (full, counts) = (Records::default(), Records::counts_only());
            for r in recs.iter().rev() {
                full.push(r.clone());
                counts.push(r.clone());
            }
            let summarise = |c| build("j", "/d", planned, 2, Duration::from_secs(30), c,
                PoolStats::default(), 0, 0, true, false);
            let (a, b) = (summarise(full.take()), summarise(counts.take()));
            prop_assert_eq!(a.records.len(), recs.len());
            prop_assert!(b.records.is_empty());
            prop_assert_eq!(serde_json::to_value(&a.sessions).ok(), serde_json::to_value(&b.sessions).ok());
            prop_assert_eq!(a.table(), b.table());
            prop_assert_eq!(a.attempts, b.attempts);
            prop_assert_eq!(a.not_started, b.not_started);
            prop_assert_eq!(&a.faults_injected, &b.faults_injected);
            prop_assert_eq!(serde_json::to_value(&a.durations).ok(), serde_json::to_value(&b.durations).ok());
            // Against the records themselves.
            for o in Outcome::ALL {
                prop_assert_eq!(a.sessions[o.as_str()], recs.iter().filter(|r| r.outcome == o).count() as u64);
            }
            prop_assert_eq!(a.attempts, recs.iter().map(|r| u64::from(r.attempts)).sum::<u64>());
            prop_assert_eq!(a.collateral_restarts, recs.iter().map(|r| u64::from(r.collateral_restarts)).sum::<u64>());
            prop_assert_eq!(a.faults_injected.values().sum::<u64>(), recs.iter().map(|r| r.faults.len() as u64).sum::<u64>());
            let mut ok: Vec<u64> = recs.iter().filter(|r| matches!(r.outcome, Outcome::Ok | Outcome::Retried)).map(|r| r.duration_ms).collect();
            ok.sort_unstable();
            prop_assert_eq!(a.durations.max_ms, ok.last().copied().unwrap_or(0));
            prop_assert_eq!(a.durations.p50_ms, percentile(&ok, 50.0));
            prop_assert!(a.records.windows(2).all(|w| w[0].index < w[1].index));
        }
    }
}
