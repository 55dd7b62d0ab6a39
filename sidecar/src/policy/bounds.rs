//! The range of every number a policy holds (README.md, "Policy reference" → "Bounds").
//!
//! A policy value ends up in clock arithmetic (`Instant + orphaned_for`), in counters and in
//! buffers sized from it, so an unbounded one is a crash or an allocation waiting to happen: a
//! bare-integer `orphaned_for: 18446744073709551615` used to pass `policy check` and panic the
//! daemon at the first orphan. Every duration is at most [`MAX_DURATION`] and every size at most
//! [`MAX_SIZE`] whatever field holds it (checked by the unit types); the fields below have tighter
//! ranges. Each check runs inside the serde visitor of its value, so an error carries the value's
//! own line and column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use super::units::{DurationVisitor, HumanDuration};
pub use super::units::{MAX_DURATION, MAX_SIZE};

/// Longest time between SIGTERM and SIGKILL: a process that needs more is not stopping.
pub const MAX_GRACE: Duration = Duration::from_secs(600);
/// Shortest leak window: below it a window holds a single sample and no trend is ever seen.
pub const MIN_LEAK_WINDOW: Duration = Duration::from_secs(1);
/// Longest leak window. A window keeps at most
/// [`MAX_SAMPLES`](crate::detect::leaks::MAX_SAMPLES) samples, so a long one only looks far back
/// with a long scan interval.
pub const MAX_LEAK_WINDOW: Duration = Duration::from_secs(7 * 86_400);
/// Fewest samples for a verdict: fewer and the Mann–Kendall test means nothing.
pub const MIN_SAMPLES: usize = 4;
/// Most samples a verdict can ask for: a series never holds more, so a larger `min_samples`
/// would silently disable every leak rule.
pub const MAX_SAMPLES: usize = crate::detect::leaks::MAX_SAMPLES;
/// Highest kill rate (0 allows none). The rate limiter remembers one instant per kill.
pub const MAX_KILLS_PER_MINUTE: u64 = 100_000;
/// Highest `fds_above`: the kernel's ceiling on `RLIMIT_NOFILE` (`fs.nr_open`) is below 2^31.
pub const MAX_FDS: u64 = i32::MAX as u64;
/// Highest `zombie_parent.min_zombies`: the kernel's `PID_MAX_LIMIT` (2^22).
pub const MAX_MIN_ZOMBIES: u64 = 1 << 22;
/// Highest `leak.min_relative_slope_per_hour` (10,000 % per hour).
pub const MAX_RELATIVE_SLOPE_PER_HOUR: f64 = 100.0;

/// Largest policy text: a policy is a page or two (the built-in one is 2 KiB); this is room for
/// hundreds of rules, and it bounds what YAML, the regex compiler and error location work
/// through.
pub const MAX_POLICY_BYTES: usize = 256 << 10;
/// Most `[` and `{` characters a policy may hold outside comment lines. libyaml (under
/// serde_norway) checks every pending simple key of every open flow level at each token, so its
/// time grows with tokens × flow nesting: 200,000 nested `[` in 400 KB took minutes, before
/// serde_norway's own nesting limit (128) saw any of it. Counting every bracket — flow-style
/// `[…]`/`{…}` and regex classes alike — needs no YAML lexer to be sure of (a bracket in a
/// quoted string can only be counted too often); measured worst case at [`MAX_POLICY_BYTES`]:
/// about 0.6 s.
pub const MAX_BRACKETS: usize = 1024;
/// Most regular expressions one policy may compile (every `comm`, `exe`, `cmdline` and stale
/// pattern, aliases counted each time they are used): with [`PATTERN_SIZE_LIMIT`] this bounds
/// the memory a policy's regexes can take (measured: under 0.5 MiB for the largest regex the
/// limit lets through, so under 64 MiB in all).
pub const MAX_PATTERNS: usize = 128;
/// Largest compiled program of one regex, and the most its lazy DFA may cache (regex's own
/// defaults are 10 MiB and 2 MiB).
pub const PATTERN_SIZE_LIMIT: usize = 256 << 10;

// === durations ===

/// `grace`: `0` (SIGKILL at once) to [`MAX_GRACE`].
pub fn grace<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    d.deserialize_any(DurationVisitor {
        min: Duration::ZERO,
        max: MAX_GRACE,
    })
}

/// `leak.window`: [`MIN_LEAK_WINDOW`] to [`MAX_LEAK_WINDOW`].
pub fn leak_window<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    d.deserialize_any(DurationVisitor {
        min: MIN_LEAK_WINDOW,
        max: MAX_LEAK_WINDOW,
    })
}

// === integers ===

/// `max_kills_per_minute`: 0 to [`MAX_KILLS_PER_MINUTE`].
pub fn max_kills_per_minute<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = d.deserialize_u64(Int {
        min: 0,
        max: MAX_KILLS_PER_MINUTE,
    })?;
    // In range, so it fits.
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

/// `leak.min_samples`: [`MIN_SAMPLES`] to [`MAX_SAMPLES`].
pub fn min_samples<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = d.deserialize_u64(Int {
        min: MIN_SAMPLES as u64,
        max: MAX_SAMPLES as u64,
    })?;
    Ok(usize::try_from(v).unwrap_or(MAX_SAMPLES))
}

/// `zombie_parent.min_zombies`: 1 to [`MAX_MIN_ZOMBIES`].
pub fn min_zombies<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = d.deserialize_u64(Int {
        min: 1,
        max: MAX_MIN_ZOMBIES,
    })?;
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

/// `fds_above`: 0 to [`MAX_FDS`].
pub fn fds_above<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(Optional(Int {
        min: 0,
        max: MAX_FDS,
    }))
}

// === ratios ===

/// `fd_ratio_above`: 0 to 1.
pub fn fd_ratio_above<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_option(Optional(Float {
        min: 0.0,
        max: 1.0,
        open: false,
    }))
}

/// `leak.alpha`: strictly between 0 and 0.5.
pub fn alpha<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_f64(Float {
        min: 0.0,
        max: 0.5,
        open: true,
    })
}

/// `leak.min_relative_slope_per_hour`: 0 to [`MAX_RELATIVE_SLOPE_PER_HOUR`].
pub fn min_relative_slope<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_f64(Float {
        min: 0.0,
        max: MAX_RELATIVE_SLOPE_PER_HOUR,
        open: false,
    })
}

// === visitors ===

/// A whole number in `min..=max`. Messages need not name the field: serde_norway prefixes the
/// value's path (`rules[0].when.fds_above: …`) and appends its line and column.
struct Int {
    min: u64,
    max: u64,
}

impl Visitor<'_> for Int {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number from {} to {}", self.min, self.max)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format!(
                "{v} is out of range ({} to {})",
                self.min, self.max
            )))
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "{v} is out of range ({} to {})",
                self.min, self.max
            ))),
        }
    }
}

/// A finite number in `min..=max` (`open`: strictly between them).
struct Float {
    min: f64,
    max: f64,
    open: bool,
}

impl Visitor<'_> for Float {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a number from {} to {}", self.min, self.max)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        // NaN fails both comparisons, so it is out of range too.
        let ok = if self.open {
            self.min < v && v < self.max
        } else {
            self.min <= v && v <= self.max
        };
        if ok {
            Ok(v)
        } else {
            let (lo, hi) = if self.open {
                ("strictly between", "and")
            } else {
                ("from", "to")
            };
            Err(E::custom(format!(
                "{v} is out of range ({lo} {} {hi} {})",
                self.min, self.max
            )))
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }
}

/// `null` or a value read by the inner visitor.
struct Optional<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for Optional<V> {
    type Value = Option<V::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self.0).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "fds_above")]
        fds: Option<u64>,
        #[serde(default, deserialize_with = "fd_ratio_above")]
        ratio: Option<f64>,
        #[serde(default = "one", deserialize_with = "alpha")]
        alpha: f64,
        #[serde(default = "zero", deserialize_with = "grace")]
        grace: HumanDuration,
    }
    fn one() -> f64 {
        0.1
    }
    fn zero() -> HumanDuration {
        HumanDuration::default()
    }

    fn t(s: &str) -> Result<T, String> {
        serde_norway::from_str::<T>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn values_at_the_bounds_are_accepted() {
        let v = t("fds: 2147483647\nratio: 1\nalpha: 0.49\ngrace: 10m\n").unwrap();
        assert_eq!(v.fds, Some(MAX_FDS));
        assert_eq!(v.ratio, Some(1.0));
        assert_eq!(v.grace.0, MAX_GRACE);
        assert_eq!(v.alpha, 0.49);
        let v = t("fds: ~\nratio: 0\n").unwrap();
        assert_eq!(v.fds, None);
        assert_eq!(v.ratio, Some(0.0));
    }

    #[test]
    fn values_past_the_bounds_are_rejected_at_the_value() {
        for (text, needle) in [
            (
                "fds: 2147483648\n",
                "fds: 2147483648 is out of range (0 to 2147483647)",
            ),
            ("fds: -1\n", "fds: -1 is out of range"),
            ("ratio: .nan\n", "ratio: NaN is out of range (from 0 to 1)"),
            ("ratio: 1.01\n", "ratio: 1.01 is out of range"),
            (
                "alpha: 0.5\n",
                "alpha: 0.5 is out of range (strictly between 0 and 0.5)",
            ),
            ("alpha: 0\n", "strictly between 0 and 0.5"),
            ("grace: 601\n", "grace: 10m1s is out of range (at most 10m)"),
            ("grace: 11m\n", "grace: 11m is out of range"),
        ] {
            let e = t(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.contains("at line 1 column"), "{text:?} is located: {e}");
        }
    }
}
