//! Jobs: what a run does. YAML, unknown fields are errors, and every error names the file, line
//! and column (`FILE:LINE:COLUMN: message`).
//!
//! ```yaml
//! name: example
//! sessions: 100            # repetitions (alias: repetitions)
//! concurrency: 2
//! retries: 1               # extra attempts for a failed session
//! timeouts: { step: 10s, session: 30s }
//! targets: ["{site}"]      # base URLs; session i uses targets[i % len]; {site} = embedded site
//! artifacts: ./shots       # where screenshots and PDFs go (default: inside the run directory)
//! faults: ["crash:0.1"]    # like --fault
//! network: { proxy: "http://127.0.0.1:3128", block: [image, font, media] }  # see netopts.rs
//! state: cookies.json      # cookies loaded into every session; each session's saved beside its artifacts
//! steps:
//!   - navigate: /rows              # relative to the target, or an absolute URL
//!   - wait_for: "#row-199"         # CSS selector
//!   - click: "a#next"
//!   - type: { selector: "input[name=q]", text: "hello" }
//!   - evaluate: "document.title"   # awaited if it is a promise
//!   - screenshot: {}               # PNG; { full_page: true } for the whole page
//!   - pdf: {}
//!   - sleep: 200ms
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::faults::FaultSpec;

pub const DEFAULT_JOB: &str = include_str!("default-job.yaml");

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub sessions: u64,
    pub concurrency: usize,
    pub retries: u32,
    pub step_timeout: Duration,
    pub session_timeout: Duration,
    pub targets: Vec<String>,
    pub steps: Vec<Step>,
    pub artifacts: Option<PathBuf>,
    pub faults: Vec<FaultSpec>,
    /// Proxy, credentials, blocked requests (`netopts.rs`).
    pub network: crate::netopts::Network,
    /// Storage state: for `run` a file, for the service a name in its `--state-dir`.
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Navigate(String),
    WaitFor(String),
    Click(String),
    Type(TypeStep),
    Evaluate(String),
    Screenshot(ScreenshotStep),
    Pdf(PdfStep),
    Sleep(Dur),
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Navigate(_) => "navigate",
            Step::WaitFor(_) => "wait_for",
            Step::Click(_) => "click",
            Step::Type(_) => "type",
            Step::Evaluate(_) => "evaluate",
            Step::Screenshot(_) => "screenshot",
            Step::Pdf(_) => "pdf",
            Step::Sleep(_) => "sleep",
        }
    }
}

/// A step is written as a map with exactly one key (`- navigate: /rows`). serde_norway reads
/// externally tagged enums only from YAML tags (`!navigate /rows`), so steps go through this
/// struct, whose unknown keys are located errors like everywhere else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    navigate: Option<String>,
    wait_for: Option<String>,
    click: Option<String>,
    #[serde(rename = "type")]
    type_: Option<TypeStep>,
    evaluate: Option<String>,
    screenshot: Option<ScreenshotStep>,
    pdf: Option<PdfStep>,
    sleep: Option<Dur>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawStep::deserialize(d)?;
        let mut steps: Vec<Step> = Vec::new();
        steps.extend(r.navigate.map(Step::Navigate));
        steps.extend(r.wait_for.map(Step::WaitFor));
        steps.extend(r.click.map(Step::Click));
        steps.extend(r.type_.map(Step::Type));
        steps.extend(r.evaluate.map(Step::Evaluate));
        steps.extend(r.screenshot.map(Step::Screenshot));
        steps.extend(r.pdf.map(Step::Pdf));
        steps.extend(r.sleep.map(Step::Sleep));
        match steps.len() {
            1 => Ok(steps.remove(0)),
            n => Err(serde::de::Error::custom(format!(
                "a step has exactly one of navigate, wait_for, click, type, evaluate, screenshot, pdf, sleep (found {n})"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeStep {
    pub selector: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenshotStep {
    #[serde(default)]
    pub full_page: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdfStep {}

/// A duration written `250ms`, `30s`, `5m`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// The longest duration a job or a flag may give: a year. Anything longer is a typo, and a
/// deadline computed from it (`now + duration`) would overflow the clock and panic.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let too_long = || format!("duration `{s}` is longer than a year (8760h)");
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration `{s}` needs a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!(
                "invalid duration `{s}` (e.g. 250ms, 30s, 5m, 1h30m)"
            ));
        }
        // More digits than a u64 holds is a too-long duration, not a malformed one.
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            _ => {
                return Err(format!(
                    "unknown unit `{unit}` in duration `{s}` (ms, s, m, h)"
                ))
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, alias = "repetitions")]
    sessions: Option<u64>,
    #[serde(default)]
    concurrency: Option<Positive>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    timeouts: Option<Timeouts>,
    #[serde(default)]
    targets: Option<Vec<String>>,
    steps: NonEmpty<Step>,
    #[serde(default)]
    artifacts: Option<PathBuf>,
    #[serde(default)]
    faults: Vec<FaultSpec>,
    #[serde(default)]
    network: Option<crate::netopts::Network>,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Timeouts {
    #[serde(default)]
    step: Option<Dur>,
    #[serde(default)]
    session: Option<Dur>,
}

/// A count that must be at least 1 (checked while parsing, so the error has a location).
#[derive(Debug, Clone, Copy)]
struct Positive(u64);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if n == 0 {
            return Err(serde::de::Error::custom("must be at least 1"));
        }
        Ok(Positive(n))
    }
}

#[derive(Debug)]
struct NonEmpty<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmpty<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<T>::deserialize(d)?;
        if v.is_empty() {
            return Err(serde::de::Error::custom("needs at least one step"));
        }
        Ok(NonEmpty(v))
    }
}

/// A job that could not be read, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for JobError {}

pub fn load(path: &Path) -> Result<Job, JobError> {
    let text = std::fs::read_to_string(path).map_err(|e| JobError {
        file: path.display().to_string(),
        line: None,
        column: None,
        message: e.to_string(),
    })?;
    parse(&text, &path.display().to_string())
}

pub fn default_job() -> Result<Job, JobError> {
    parse(DEFAULT_JOB, "<default job>")
}

pub fn parse(text: &str, file: &str) -> Result<Job, JobError> {
    let raw: JobFile = serde_norway::from_str(text).map_err(|e| {
        let loc = e.location();
        let mut message = e.to_string();
        // serde_norway appends " at line L column C"; the location is already in front.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        JobError {
            file: file.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
        }
    })?;
    let timeouts = raw.timeouts.unwrap_or(Timeouts {
        step: None,
        session: None,
    });
    let step_timeout = timeouts.step.map_or(Duration::from_secs(15), |d| d.0);
    let session_timeout = timeouts.session.map_or(Duration::from_secs(60), |d| d.0);
    let unlocated = |message: String| JobError {
        file: file.to_string(),
        line: None,
        column: None,
        message,
    };
    if step_timeout.is_zero() || session_timeout.is_zero() {
        return Err(unlocated("timeouts must be longer than 0".into()));
    }
    let network = raw.network.unwrap_or_default();
    network
        .validate()
        .map_err(|e| unlocated(format!("network: {e}")))?;
    let targets = raw.targets.unwrap_or_else(|| vec!["{site}".to_string()]);
    if targets.is_empty() {
        return Err(unlocated("targets: needs at least one URL".into()));
    }
    Ok(Job {
        name: raw.name.unwrap_or_else(|| "job".to_string()),
        sessions: raw.sessions.unwrap_or(20),
        concurrency: raw.concurrency.map_or(2, |c| c.0 as usize),
        retries: raw.retries.unwrap_or(1),
        step_timeout,
        session_timeout,
        targets,
        steps: raw.steps.0,
        artifacts: raw.artifacts,
        faults: raw.faults,
        network,
        state: raw.state,
    })
}

/// Resolve a `navigate` argument against a session's target, replacing `{site}`.
pub fn resolve_url(target: &str, arg: &str, site: &str) -> String {
    let target = target.replace("{site}", site);
    let arg = arg.replace("{site}", site);
    if arg.contains("://") || arg.starts_with("about:") || arg.starts_with("data:") {
        return arg;
    }
    let base = target.trim_end_matches('/');
    if arg.is_empty() {
        format!("{base}/")
    } else if arg.starts_with('/') {
        format!("{base}{arg}")
    } else {
        format!("{base}/{arg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_job_parses() {
        let j = default_job().unwrap();
        assert_eq!(j.name, "default");
        assert_eq!(j.concurrency, 2);
        assert_eq!(j.targets, vec!["{site}"]);
        assert!(j.steps.iter().any(|s| matches!(s, Step::Screenshot(_))));
        assert_eq!(j.step_timeout, Duration::from_secs(10));
    }

    #[test]
    fn every_step_kind_parses() {
        let j = parse(
            r#"
sessions: 3
steps:
  - navigate: /
  - wait_for: "form"
  - click: "a#x"
  - type: { selector: "input", text: "hi" }
  - evaluate: "1 + 1"
  - screenshot: { full_page: true }
  - pdf: {}
  - sleep: 1s500ms
"#,
            "j.yaml",
        )
        .unwrap();
        assert_eq!(j.sessions, 3);
        assert_eq!(j.steps.len(), 8);
        assert_eq!(j.steps[7], Step::Sleep(Dur(Duration::from_millis(1500))));
        assert_eq!(
            j.steps[5],
            Step::Screenshot(ScreenshotStep { full_page: true })
        );
    }

    #[test]
    fn a_step_has_exactly_one_action() {
        let e = parse("steps:\n  - navigate: /\n    click: a\n", "j.yaml").unwrap_err();
        assert!(e.message.contains("exactly one"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn unknown_field_is_located() {
        let e = parse(
            "sessions: 1\nsteps:\n  - navigate: /\n    colour: red\n",
            "j.yaml",
        )
        .unwrap_err();
        assert_eq!(e.file, "j.yaml");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().starts_with("j.yaml:4:"), "{e}");
    }

    #[test]
    fn unknown_step_and_top_level_typo_are_located() {
        let e = parse("steps:\n  - navigte: /\n", "j.yaml").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("navigte"), "{e}");
        let e = parse("sesions: 2\nsteps:\n  - navigate: /\n", "j.yaml").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn bad_values_are_located() {
        let e = parse("concurrency: 0\nsteps:\n  - navigate: /\n", "j.yaml").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("at least 1"), "{e}");
        let e = parse(
            "timeouts:\n  step: 10 parsecs\nsteps:\n  - navigate: /\n",
            "j.yaml",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("steps: []\n", "j.yaml").unwrap_err();
        assert!(e.message.contains("at least one step"), "{e}");
        let e = parse("faults: [boom]\nsteps:\n  - navigate: /\n", "j.yaml").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 days").is_err());
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    }

    /// A huge duration is a located error, not a panic: before the fix `n * 3600` overflowed
    /// (a panic in debug builds, a wrapped value in release) and a parsed `u64::MAX` seconds
    /// panicked later, when a deadline was computed from it.
    // See: issue 14, item 11.
    #[test]
    fn huge_durations_are_errors() {
        for d in [
            "8761h",
            "18446744073709551615s",
            "18446744073709551615h",
            "99999999999999999999999s",
            "5124095576030431h5124095576030431h",
        ] {
            let e = parse_duration(d).expect_err(d);
            assert!(e.contains("longer than a year"), "{d}: {e}");
        }
        let e = parse(
            "timeouts:\n  session: 18446744073709551615h\nsteps:\n  - navigate: /\n",
            "j.yaml",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().starts_with("j.yaml:2:"), "{e}");
    }

    #[test]
    fn urls_resolve_against_the_target() {
        let site = "http://127.0.0.1:9";
        assert_eq!(
            resolve_url("{site}", "/rows", site),
            "http://127.0.0.1:9/rows"
        );
        assert_eq!(resolve_url("{site}/", "", site), "http://127.0.0.1:9/");
        assert_eq!(resolve_url("http://a/b", "c", site), "http://a/b/c");
        assert_eq!(resolve_url("{site}", "https://x/y", site), "https://x/y");
        assert_eq!(
            resolve_url("{site}", "{site}/hang", site),
            "http://127.0.0.1:9/hang"
        );
    }
}
