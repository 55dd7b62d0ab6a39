//! Leak detection: a pure function of a series of (time, value) samples.
//!
//! "Growing" needs all of: enough samples; a Mann–Kendall trend test significant at `alpha`
//! (normal approximation with tie and continuity correction — robust to noise and outliers,
//! no assumption of linearity); a positive Theil–Sen slope (median of pairwise slopes: a single
//! spike barely moves it); a slope that matters — relative growth of at least
//! `min_relative_slope_per_hour` of the median value per hour, so a slow meaningless drift is not
//! a leak; and a trend that holds across the window, not in one place (`consistent_across_halves`):
//! each half's Theil–Sen slope is at least [`HALF_SLOPE_FRACTION`] of the whole window's, and
//! the second half's median level has moved by at least [`HALF_LEVEL_FRACTION`] of what that
//! slope predicts. Shrinking is judged symmetrically. The projection to a limit uses the whole
//! window's Theil–Sen slope.
//!
//! What the halves check buys and costs (measured on synthetic series, 120 samples):
//! - A step that stays (a cache warming, a new tab: flat, one jump, flat) makes every pair across
//!   the jump rise, so Mann–Kendall and the whole-window slope alone call it growth for as long as
//!   both levels are in the window (≈ 80 % of jump positions). With the check, one half is flat
//!   and the step is `Flat`; only a jump 8–17 % from either end of the window, where the flat half's
//!   noise can pass for a slope, still reads `Growing` now and then (≤ 8 % of noise draws), so a
//!   rule should ask for the verdict to last (`for:`).
//! - A garbage-collector sawtooth on a flat baseline: Mann–Kendall assumes independent samples and
//!   finds a "trend" in about a quarter of cases; the level test removes all but sawtooths with
//!   two or three teeth per window (each half then looks like a ramp).
//! - A leak that starts in the middle of a window is reported once it has run for about 80 % of
//!   the window (instead of under half), and a very noisy marginal ramp (0.2 %/min with ±5 %
//!   noise) is found in fewer windows. Leaks worth acting on run for hours; the price is minutes.
//!
//! Cost: O(n²) in the samples, with n capped at [`MAX_FIT_POINTS`] by even subsampling; about
//! 30–50 µs for 120 samples in a release build.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

/// Detector settings (from the policy's `leak:` section).
#[derive(Debug, Clone, Copy)]
pub struct LeakParams {
    pub window: Duration,
    pub min_samples: usize,
    pub alpha: f64,
    pub min_relative_slope_per_hour: f64,
}

impl Default for LeakParams {
    fn default() -> Self {
        LeakParams {
            window: Duration::from_secs(600),
            min_samples: 10,
            alpha: 0.01,
            min_relative_slope_per_hour: 0.05,
        }
    }
}

/// Samples within a sliding time window, kept small: a node has hundreds of trees, each with three
/// series. Points are stored as `f32` offsets from the series' own base time and `f32` values
/// (7 significant digits: far below any trend that matters), and thinned in time so a window
/// never holds more than [`MAX_SAMPLES`] — the fit uses at most [`MAX_FIT_POINTS`] anyway. The
/// newest point is always the latest sample.
#[derive(Debug, Clone, Default)]
pub struct Series {
    base: f64,
    samples: VecDeque<(f32, f32)>,
}

/// Points kept at most per window (bounds memory per tree: 3 series × 120 × 8 bytes, and the
/// O(n²) fit: at 500 trees and a 1 s scan, 240 points cost ~0.3 s of CPU per scan, 120 ~0.06 s).
pub const MAX_SAMPLES: usize = 120;
/// Theil–Sen works on at most this many points (evenly subsampled): O(n²) pairs.
pub const MAX_FIT_POINTS: usize = MAX_SAMPLES;
/// Offsets are re-based past this many seconds, so `f32` keeps sub-second precision.
const REBASE_AFTER: f64 = 1.0e6;
/// Each half of the window must show at least this fraction of the whole window's slope (same
/// sign) for a trend to count: a step is flat on one side of the jump.
pub const HALF_SLOPE_FRACTION: f64 = 0.5;
/// The second half's median must differ from the first half's by at least this fraction of what
/// the slope predicts: a sawtooth around a flat baseline does not move the level.
pub const HALF_LEVEL_FRACTION: f64 = 0.5;

impl Series {
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a sample at `t` seconds (monotonic) and drop those older than `window`. Samples closer
    /// than `window / MAX_SAMPLES` to the point before the newest replace the newest.
    pub fn push(&mut self, t: f64, v: f64, window: Duration) {
        if !t.is_finite() || !v.is_finite() {
            return;
        }
        if self.samples.is_empty() {
            self.base = t;
        }
        if t - self.base > REBASE_AFTER {
            let shift = t - self.base;
            for s in self.samples.iter_mut() {
                s.0 = (f64::from(s.0) - shift) as f32;
            }
            self.base = t;
        }
        let step = window.as_secs_f64() / MAX_SAMPLES as f64;
        let point = ((t - self.base) as f32, v as f32);
        let n = self.samples.len();
        let thin = n >= 2 && t - (self.base + f64::from(self.samples[n - 2].0)) < step;
        match (thin, self.samples.back_mut()) {
            (true, Some(last)) => *last = point,
            _ => self.samples.push_back(point),
        }
        let oldest = t - window.as_secs_f64();
        while self
            .samples
            .front()
            .is_some_and(|&(s, _)| self.base + f64::from(s) < oldest)
        {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    pub fn last(&self) -> Option<(f64, f64)> {
        self.samples
            .back()
            .map(|&(t, v)| (self.base + f64::from(t), f64::from(v)))
    }
    pub fn first_t(&self) -> Option<f64> {
        self.samples.front().map(|s| self.base + f64::from(s.0))
    }
    pub fn samples(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.samples
            .iter()
            .map(|&(t, v)| (self.base + f64::from(t), f64::from(v)))
    }
}

/// The detector's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    /// Fewer samples than `min_samples`.
    Insufficient,
    Flat,
    Growing,
    Shrinking,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Verdict {
    pub trend: Trend,
    /// Theil–Sen slope, units per second.
    pub slope_per_second: f64,
    /// Mann–Kendall p-value, one-sided in the direction of the statistic's sign.
    pub p_value: f64,
    pub samples: usize,
    pub span_seconds: f64,
    /// Last value.
    pub current: f64,
}

/// Judge one series.
pub fn analyze(samples: &[(f64, f64)], p: &LeakParams) -> Verdict {
    let n = samples.len();
    let current = samples.last().map(|s| s.1).unwrap_or(0.0);
    let span = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    let mut v = Verdict {
        trend: Trend::Insufficient,
        slope_per_second: 0.0,
        p_value: 1.0,
        samples: n,
        span_seconds: span,
        current,
    };
    if n < p.min_samples.max(3) || span <= 0.0 {
        return v;
    }
    let pts: Vec<(f64, f64)> = if n > MAX_FIT_POINTS {
        (0..MAX_FIT_POINTS)
            .map(|i| samples[i * (n - 1) / (MAX_FIT_POINTS - 1)])
            .collect()
    } else {
        samples.to_vec()
    };
    let (s, var) = mann_kendall(&pts);
    let z = if s > 0.0 {
        (s - 1.0) / var.sqrt()
    } else if s < 0.0 {
        (s + 1.0) / var.sqrt()
    } else {
        0.0
    };
    let p_value = if var > 0.0 {
        1.0 - normal_cdf(z.abs())
    } else {
        1.0
    };
    let slope = theil_sen(&pts);
    v.slope_per_second = slope;
    v.p_value = p_value;
    let mut vals: Vec<f64> = pts.iter().map(|x| x.1).collect();
    let med = median(&mut vals).abs().max(1.0);
    let relative_per_hour = slope.abs() * 3600.0 / med;
    let significant = p_value < p.alpha
        && relative_per_hour >= p.min_relative_slope_per_hour
        && consistent_across_halves(&pts, slope);
    v.trend = if significant && s > 0.0 && slope > 0.0 {
        Trend::Growing
    } else if significant && s < 0.0 && slope < 0.0 {
        Trend::Shrinking
    } else {
        Trend::Flat
    };
    v
}

/// Time until `current` reaches `limit` at `slope_per_second`; `None` if not growing.
pub fn time_to_limit(current: f64, slope_per_second: f64, limit: f64) -> Option<Duration> {
    if slope_per_second.is_nan() || slope_per_second <= 0.0 || !limit.is_finite() {
        return None;
    }
    if limit <= current {
        return Some(Duration::ZERO);
    }
    let secs = (limit - current) / slope_per_second;
    (secs.is_finite() && secs < 1e12).then(|| Duration::from_secs_f64(secs))
}

/// Whether the trend holds across the window rather than in one place: each half (by sample
/// index) has a Theil–Sen slope of the same sign as `slope` and at least
/// [`HALF_SLOPE_FRACTION`] of it, and the second half's median sits at least
/// [`HALF_LEVEL_FRACTION`] of the expected change (`slope` × the distance between the halves'
/// mean times) beyond the first half's. A step fails the first test (one half is flat); a
/// sawtooth on a flat baseline (a garbage-collected heap) fails the second (both halves sit at
/// the same level, though Mann–Kendall, which assumes independent samples, calls it a trend).
fn consistent_across_halves(pts: &[(f64, f64)], slope: f64) -> bool {
    if slope == 0.0 || !slope.is_finite() || pts.len() < 4 {
        return false;
    }
    let (a, b) = pts.split_at(pts.len() / 2);
    if ![a, b]
        .iter()
        .all(|h| theil_sen(h) / slope >= HALF_SLOPE_FRACTION)
    {
        return false;
    }
    let mean_t = |h: &[(f64, f64)]| h.iter().map(|x| x.0).sum::<f64>() / h.len() as f64;
    let mut va: Vec<f64> = a.iter().map(|x| x.1).collect();
    let mut vb: Vec<f64> = b.iter().map(|x| x.1).collect();
    let expected = slope * (mean_t(b) - mean_t(a));
    (median(&mut vb) - median(&mut va)) / expected >= HALF_LEVEL_FRACTION
}

/// Mann–Kendall S and its variance with the tie correction.
fn mann_kendall(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len();
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            let d = pts[j].1 - pts[i].1;
            if d > 0.0 {
                s += 1;
            } else if d < 0.0 {
                s -= 1;
            }
        }
    }
    let mut vals: Vec<f64> = pts.iter().map(|p| p.1).collect();
    vals.sort_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut i = 0;
    while i < vals.len() {
        let mut j = i;
        while j + 1 < vals.len() && vals[j + 1] == vals[i] {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        if t > 1.0 {
            ties += t * (t - 1.0) * (2.0 * t + 5.0);
        }
        i = j + 1;
    }
    let nf = n as f64;
    let var = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0;
    (s as f64, var)
}

fn theil_sen(pts: &[(f64, f64)]) -> f64 {
    let mut slopes = Vec::with_capacity(pts.len() * (pts.len().saturating_sub(1)) / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let dt = pts[j].0 - pts[i].0;
            if dt > 0.0 {
                slopes.push((pts[j].1 - pts[i].1) / dt);
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    median(&mut slopes)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if v.len() % 2 == 1 {
        m
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + m) / 2.0
    }
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 erf; error < 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    let erf = if x >= 0.0 { y } else { -y };
    0.5 * (1.0 + erf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    fn series(n: usize, every: f64, mut f: impl FnMut(usize, f64) -> f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64 * every, f(i, i as f64 * every)))
            .collect()
    }

    fn p() -> LeakParams {
        LeakParams::default()
    }

    #[test]
    fn flat_with_noise_is_not_a_leak() {
        for seed in 0..200 {
            let mut r = Lcg(seed);
            let s = series(120, 5.0, |_, _| 500e6 + 20e6 * r.next());
            let v = analyze(&s, &p());
            assert_ne!(v.trend, Trend::Growing, "seed {seed}: {v:?}");
        }
    }

    #[test]
    fn a_steady_ramp_is_growing() {
        let mut r = Lcg(7);
        // +1 %/min on 500 MB with ±2 % noise, 10 minutes at 5 s.
        let s = series(120, 5.0, |_, t| {
            500e6 * (1.0 + 0.01 * t / 60.0) + 10e6 * r.next()
        });
        let v = analyze(&s, &p());
        assert_eq!(v.trend, Trend::Growing, "{v:?}");
        let per_min = v.slope_per_second * 60.0;
        assert!((per_min - 5e6).abs() < 1e6, "{per_min}");
        let ttl = time_to_limit(v.current, v.slope_per_second, 2e9).expect("ttl");
        assert!(
            ttl > Duration::from_secs(60 * 200) && ttl < Duration::from_secs(60 * 320),
            "{ttl:?}"
        );
    }

    #[test]
    fn a_single_spike_is_not_a_leak() {
        let mut r = Lcg(3);
        let s = series(
            120,
            5.0,
            |i, _| if i == 60 { 5e9 } else { 500e6 + 5e6 * r.next() },
        );
        assert_ne!(analyze(&s, &p()).trend, Trend::Growing);
    }

    #[test]
    fn a_steady_ramp_is_growing_whatever_the_noise_draw() {
        for seed in 0..100 {
            let mut r = Lcg(seed);
            let s = series(120, 5.0, |_, t| {
                500e6 * (1.0 + 0.01 * t / 60.0) + 10e6 * r.next()
            });
            assert_eq!(analyze(&s, &p()).trend, Trend::Growing, "seed {seed}");
        }
    }

    /// A cache warming: flat, one jump of 20 %, flat. Mann–Kendall and the whole-window slope
    /// alone call this growth for as long as both levels are in the window; one half of the
    /// window is flat, so it is `Flat` — except, now and then, a jump near either end of the
    /// window (see the module doc), which is bounded here rather than excluded.
    #[test]
    fn a_step_up_once_is_not_growing() {
        let step = |at: usize, seed: u64| {
            let mut r = Lcg(seed);
            series(120, 5.0, move |i, _| {
                let level = if i >= at { 600e6 } else { 500e6 };
                level + 5e6 * r.next()
            })
        };
        for at in (20..=100).step_by(4) {
            for seed in 0..8 {
                let v = analyze(&step(at, seed), &p());
                assert_ne!(v.trend, Trend::Growing, "jump at {at}, seed {seed}: {v:?}");
            }
        }
        let mut near_the_ends = 0;
        for at in (1..20).chain(101..120) {
            for seed in 0..10 {
                near_the_ends += (analyze(&step(at, seed), &p()).trend == Trend::Growing) as u32;
            }
        }
        // 38 positions × 10 draws near the ends; a few percent at most.
        assert!(near_the_ends <= 20, "{near_the_ends} of 380");
        // Integer FD counts (exact ties on both sides of the jump).
        for at in 5..55 {
            let s = series(60, 5.0, |i, _| if i >= at { 150.0 } else { 100.0 });
            assert_ne!(analyze(&s, &p()).trend, Trend::Growing, "jump at {at}");
        }
    }

    /// Two jumps (a second tab, then a third) are a staircase, still not steady growth.
    #[test]
    fn two_steps_in_the_first_half_are_not_growing() {
        let s = series(120, 5.0, |i, _| {
            100.0 + 20.0 * ((i >= 15) as u8 + (i >= 40) as u8) as f64
        });
        assert_ne!(analyze(&s, &p()).trend, Trend::Growing);
    }

    /// A leak that begins mid-window is reported once it covers most of the window.
    #[test]
    fn a_leak_that_starts_late_is_found_once_it_fills_the_window() {
        let leak = |start: usize| {
            series(120, 5.0, move |i, _| {
                100.0 + if i >= start { (i - start) as f64 } else { 0.0 }
            })
        };
        assert_ne!(analyze(&leak(60), &p()).trend, Trend::Growing);
        assert_ne!(analyze(&leak(100), &p()).trend, Trend::Growing);
        assert_eq!(analyze(&leak(15), &p()).trend, Trend::Growing);
        assert_eq!(analyze(&leak(0), &p()).trend, Trend::Growing);
    }

    /// A garbage-collected heap: a sawtooth around a flat baseline is not a leak; the same
    /// sawtooth on a rising baseline is.
    #[test]
    fn a_gc_sawtooth_is_flat_unless_its_baseline_rises() {
        for period in [10usize, 15, 20, 30] {
            for phase in 0..period {
                // 100 MB collected every `period` samples.
                let saw = |i: usize| ((i + phase) % period) as f64 * 100e6 / period as f64;
                let flat = series(120, 5.0, |i, _| 500e6 + saw(i));
                let v = analyze(&flat, &p());
                assert_ne!(
                    v.trend,
                    Trend::Growing,
                    "period {period} phase {phase}: {v:?}"
                );
                // The same heap leaking 200 kB/s (+120 MB over the window) under the sawtooth.
                let rising = series(120, 5.0, |i, t| 500e6 + saw(i) + 200e3 * t);
                let v = analyze(&rising, &p());
                assert_eq!(
                    v.trend,
                    Trend::Growing,
                    "period {period} phase {phase}: {v:?}"
                );
            }
        }
    }

    #[test]
    fn a_slow_meaningless_drift_is_flat() {
        // +1 % per hour: significant to Mann–Kendall, below the 5 %/h floor.
        let s = series(120, 5.0, |_, t| 500e6 * (1.0 + 0.01 * t / 3600.0));
        let v = analyze(&s, &p());
        assert!(v.p_value < 1e-6, "{v:?}");
        assert_eq!(v.trend, Trend::Flat);
    }

    #[test]
    fn a_constant_series_is_flat_with_p_one() {
        let s = series(60, 5.0, |_, _| 42.0);
        let v = analyze(&s, &p());
        assert_eq!(v.trend, Trend::Flat);
        assert_eq!(v.p_value, 1.0);
        assert_eq!(v.slope_per_second, 0.0);
        assert_eq!(v.current, 42.0);
        assert_eq!(v.span_seconds, 295.0);
    }

    #[test]
    fn long_series_are_subsampled_and_still_measured() {
        // 720 samples (an hour at 5 s): +2 per minute.
        let s = series(720, 5.0, |i, _| {
            1000.0 + (i / 6) as f64 * 1.0 + (i % 2) as f64
        });
        let v = analyze(&s, &p());
        assert_eq!(v.trend, Trend::Growing, "{v:?}");
        assert_eq!(v.samples, 720);
        assert!((v.slope_per_second * 60.0 - 2.0).abs() < 0.1, "{v:?}");
    }

    #[test]
    fn p_value_matches_the_normal_approximation() {
        // 10 strictly increasing samples: S = 45, Var = 10·9·25/18 = 125,
        // z = 44/√125 ≈ 3.935, one-sided p ≈ 4.16e-5.
        let s = series(10, 1.0, |i, _| i as f64);
        let v = analyze(&s, &p());
        assert!((v.p_value - 4.16e-5).abs() < 2e-6, "{v:?}");
        assert_eq!(v.slope_per_second, 1.0);
    }

    #[test]
    fn series_ignore_non_finite_samples_and_stay_bounded() {
        let mut s = Series::new();
        assert!(s.is_empty());
        s.push(0.0, f64::NAN, Duration::from_secs(10));
        s.push(f64::INFINITY, 1.0, Duration::from_secs(10));
        assert!(s.is_empty());
        // One sample a second, each just over `window / MAX_SAMPLES` apart: nothing is thinned,
        // the window alone bounds the series to MAX_SAMPLES points.
        let w = Duration::from_secs_f64(MAX_SAMPLES as f64 - 0.5);
        for i in 0..2000 {
            s.push(i as f64, i as f64, w);
        }
        assert_eq!(s.len(), MAX_SAMPLES);
        assert_eq!(s.last(), Some((1999.0, 1999.0)));
        let first = 2000.0 - MAX_SAMPLES as f64;
        assert_eq!(s.samples().next(), Some((first, first)));
    }

    #[test]
    fn a_fast_scan_is_thinned_to_the_window_and_keeps_the_latest_value() {
        // 10 samples a second over a 60 s window: at most MAX_SAMPLES points, evenly spread,
        // the newest exact.
        let mut s = Series::new();
        let w = Duration::from_secs(60);
        for i in 0..6000 {
            let t = 1000.0 + i as f64 * 0.1;
            s.push(t, t * 2.0, w);
        }
        assert!(s.len() <= MAX_SAMPLES, "{}", s.len());
        assert!(s.len() >= MAX_SAMPLES - 2, "{}", s.len());
        let (t, v) = s.last().expect("last");
        assert!(
            (t - 1599.9).abs() < 1e-3 && (v - 3199.8).abs() < 1e-2,
            "{t} {v}"
        );
        let first = s.first_t().expect("first");
        assert!(t - first <= 60.0 + 1e-3, "the window: {first}..{t}");
        // A steady slope survives the f32 storage: 2 per second.
        let v = analyze(&s.samples().collect::<Vec<_>>(), &p());
        assert!((v.slope_per_second - 2.0).abs() < 0.01, "{v:?}");
    }

    #[test]
    fn offsets_are_rebased_so_a_long_lived_series_keeps_its_precision() {
        let mut s = Series::new();
        let w = Duration::from_secs(30);
        for i in 0..100 {
            let t = 5.0e7 + i as f64; // more than a year of uptime
            s.push(t, 1.0e9 + i as f64 * 1.0e6, w);
        }
        let pts: Vec<(f64, f64)> = s.samples().collect();
        assert!(
            pts.windows(2).all(|w| (w[1].0 - w[0].0 - 1.0).abs() < 1e-3),
            "{pts:?}"
        );
    }

    #[test]
    fn too_few_samples_are_insufficient() {
        let s = series(5, 5.0, |i, _| i as f64 * 1e6);
        assert_eq!(analyze(&s, &p()).trend, Trend::Insufficient);
    }

    #[test]
    fn decreasing_is_shrinking() {
        let s = series(60, 5.0, |i, _| 1000.0 - i as f64 * 5.0);
        assert_eq!(analyze(&s, &p()).trend, Trend::Shrinking);
    }

    #[test]
    fn tied_integer_fd_counts_are_not_growing() {
        let s = series(60, 5.0, |i, _| if i == 30 { 101.0 } else { 100.0 });
        assert_ne!(analyze(&s, &p()).trend, Trend::Growing);
    }

    #[test]
    fn a_slow_fd_ramp_is_growing() {
        // +1 FD every 3 samples (15 s) from 100: +24/h, far above 5 %/h.
        let s = series(60, 5.0, |i, _| 100.0 + (i / 3) as f64);
        let v = analyze(&s, &p());
        assert_eq!(v.trend, Trend::Growing, "{v:?}");
        let ttl = time_to_limit(v.current, v.slope_per_second, 1024.0).expect("ttl");
        // (1024 − 120) FDs at 1 per 15 s ≈ 3.8 h.
        assert!(
            ttl > Duration::from_secs(3 * 3600) && ttl < Duration::from_secs(5 * 3600),
            "{ttl:?}"
        );
    }

    #[test]
    fn time_to_limit_math() {
        assert_eq!(
            time_to_limit(10.0, 1.0, 20.0),
            Some(Duration::from_secs(10))
        );
        assert_eq!(time_to_limit(30.0, 1.0, 20.0), Some(Duration::ZERO));
        assert_eq!(time_to_limit(10.0, 0.0, 20.0), None);
        assert_eq!(time_to_limit(10.0, -1.0, 20.0), None);
        assert_eq!(time_to_limit(10.0, f64::NAN, 20.0), None);
        assert_eq!(time_to_limit(10.0, 1.0, f64::INFINITY), None);
        assert_eq!(time_to_limit(20.0, 1.0, 20.0), Some(Duration::ZERO));
        assert_eq!(
            time_to_limit(0.0, 0.5, 1800.0),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn the_window_drops_old_samples() {
        let mut s = Series::new();
        for i in 0..100 {
            s.push(i as f64, 1.0, Duration::from_secs(10));
        }
        assert_eq!(s.len(), 11);
        assert_eq!(s.first_t(), Some(89.0));
    }
}
