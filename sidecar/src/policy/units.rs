//! Human units in policies: durations (`500ms`, `30s`, `5m`, `1h30m`, `2d`) and sizes
//! (`2GiB`, `512MiB`, `100MB`, `4096`). Both deserialize from YAML strings (a bare integer is
//! seconds for a duration and bytes for a size), so a bad value is reported by serde with the
//! file's line and column.
//!
//! Both are bounded however they are written ([`MAX_DURATION`], [`MAX_SIZE`]): a policy value
//! meets the clock (`Instant + Duration`) and counters in the daemon, and an unbounded one —
//! `orphaned_for: 18446744073709551615` — overflowed there. Fields with tighter ranges check them
//! on top (see `policy::bounds`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The longest duration a policy accepts anywhere (365 days): far beyond any sensible rule, far
/// below what clock arithmetic (`Instant + Duration`) can overflow on.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The largest size a policy accepts (1 PiB): beyond any host's memory.
pub const MAX_SIZE: u64 = 1 << 50;
const MAX_SIZE_TEXT: &str = "1PiB";

/// A duration written the way people write them: `30s`, `5m`, `1h30m`, `250ms`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// A byte size: `2GiB`, `512MiB`, `100MB`, `64k`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Parse a duration such as `1h30m`, `45s`, `250ms`. Components must be in any order but each
/// needs a unit; `0` alone is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let out_of_range = || {
        format!(
            "invalid duration {s:?}: out of range (at most {})",
            format_duration(MAX_DURATION)
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number at {rest:?}"
            ));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {num:?}"))?;
        let secs_per_unit = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (use ms, s, m, h or d)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ))
            }
        };
        let secs = value * secs_per_unit;
        // Checked before `from_secs_f64`, which panics on what it cannot represent.
        if !secs.is_finite() || secs < 0.0 || secs > MAX_DURATION.as_secs_f64() {
            return Err(out_of_range());
        }
        total = total
            .checked_add(Duration::from_secs_f64(secs))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(out_of_range)?;
        rest = next;
    }
    Ok(total)
}

/// A bare number of seconds (YAML integer), within [`MAX_DURATION`].
fn duration_from_secs(secs: u64) -> Result<Duration, String> {
    if secs > MAX_DURATION.as_secs() {
        return Err(format!(
            "invalid duration {secs} (seconds): out of range (at most {})",
            format_duration(MAX_DURATION)
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// A bare number of bytes (YAML integer), within [`MAX_SIZE`].
fn size_from_bytes(bytes: u64) -> Result<u64, String> {
    if bytes > MAX_SIZE {
        return Err(format!(
            "invalid size {bytes}: out of range (at most {MAX_SIZE_TEXT})"
        ));
    }
    Ok(bytes)
}

/// Parse a size such as `2GiB`, `1.5G`, `512MiB`, `100MB`, `64k`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_len == 0 {
        return Err(format!("invalid size {s:?}: expected a number"));
    }
    let (num, unit) = t.split_at(num_len);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: bad number {num:?}"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "KB" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0f64.powi(4),
        "P" | "PB" => 1e15,
        "Pi" | "PiB" => 1024.0f64.powi(5),
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)"
            ))
        }
    };
    let bytes = (value * mult).round();
    // MAX_SIZE (2^50) is exact in f64, so the comparison is too; `as u64` cannot saturate.
    if !bytes.is_finite() || !(0.0..=MAX_SIZE as f64).contains(&bytes) {
        return Err(format!(
            "invalid size {s:?}: out of range (at most {MAX_SIZE_TEXT})"
        ));
    }
    Ok(bytes as u64)
}

/// Render a duration compactly (`1h30m`, `45s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

/// Render bytes with a binary unit (`1.5GiB`).
pub fn format_size(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

// === impl HumanDuration ===

impl HumanDuration {
    pub fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor {
            min: Duration::ZERO,
            max: MAX_DURATION,
        })
    }
}

/// Reads a duration (a string with units, or a bare integer of seconds) and checks it lies in
/// `min..=max`. Fields with a range tighter than [`MAX_DURATION`] use it through
/// `policy::bounds`; the check runs inside the visitor so that serde reports the value's own
/// line and column.
pub(crate) struct DurationVisitor {
    pub min: Duration,
    pub max: Duration,
}

impl DurationVisitor {
    fn check<E: de::Error>(&self, d: Duration) -> Result<HumanDuration, E> {
        if (self.min..=self.max).contains(&d) {
            return Ok(HumanDuration(d));
        }
        // No field name: serde_norway prefixes the value's path and appends its location.
        Err(E::custom(if self.min.is_zero() {
            format!(
                "{} is out of range (at most {})",
                format_duration(d),
                format_duration(self.max)
            )
        } else {
            format!(
                "{} is out of range ({} to {})",
                format_duration(d),
                format_duration(self.min),
                format_duration(self.max)
            )
        }))
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 30s, 5m, 1h30m or 250ms")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let d = parse_duration(v).map_err(E::custom)?;
        self.check(d)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let d = duration_from_secs(v).map_err(E::custom)?;
        self.check(d)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let v =
            u64::try_from(v).map_err(|_| E::custom(format!("invalid duration {v}: negative")))?;
        self.visit_u64(v)
    }
}

// === impl ByteSize ===

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 2GiB, 512MiB or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                size_from_bytes(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let v = u64::try_from(v)
                    .map_err(|_| E::custom(format!("invalid size {v}: negative")))?;
                self.visit_u64(v)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_human_form_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("3 weeks")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1e400s").is_err());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
    }

    /// See: issue "Trust: never kill or delete what is not a leak" — a bare integer of 2^64 − 1
    /// seconds was a valid duration, and the daemon's clock arithmetic overflowed on it.
    #[test]
    fn durations_beyond_the_bound_are_rejected_in_every_form() {
        let yaml = |s: &str| serde_norway::from_str::<HumanDuration>(s);
        let e = yaml("18446744073709551615").unwrap_err().to_string();
        assert!(e.contains("at most 365d"), "{e}");
        assert!(yaml("31536001").is_err(), "365d + 1s as bare seconds");
        assert_eq!(yaml("31536000").unwrap().0, MAX_DURATION);
        assert!(yaml("-1").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("366d").unwrap_err().contains("at most 365d"));
        assert!(parse_duration("365d1ms").is_err());
        assert_eq!(parse_duration("365d").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
        assert!(parse_duration("1e400s").is_err());
        assert!(parse_duration("NaNs").is_err());
        assert!(parse_duration("infs").is_err());
    }

    /// Many components each within range must not add up past the bound (nor overflow
    /// `Duration`, which panics).
    #[test]
    fn a_sum_of_components_is_bounded_too() {
        let many = "999999999999s".repeat(20_000);
        assert!(parse_duration(&many).unwrap_err().contains("at most 365d"));
        let many = "364d".repeat(3);
        assert!(parse_duration(&many).is_err());
    }

    #[test]
    fn sizes_beyond_the_bound_are_rejected_in_every_form() {
        let yaml = |s: &str| serde_norway::from_str::<ByteSize>(s);
        assert_eq!(parse_size("1PiB").unwrap(), MAX_SIZE);
        assert_eq!(yaml("1125899906842624").unwrap().0, MAX_SIZE);
        assert!(yaml("1125899906842625")
            .unwrap_err()
            .to_string()
            .contains("at most 1PiB"));
        assert!(yaml("18446744073709551615").is_err());
        assert!(parse_size("2PiB").unwrap_err().contains("at most 1PiB"));
        assert!(
            parse_size("18446744073709551616").is_err(),
            "2^64 rounds into u64::MAX"
        );
        assert!(parse_size("16EiB").is_err());
        assert!(parse_size("1e400").is_err());
        assert!(parse_size("NaN").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["30s", "5m", "1h30m", "250ms", "2d"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(format_size(1536 << 20), "1.5GiB");
    }
}
