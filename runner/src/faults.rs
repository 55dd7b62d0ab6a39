//! Fault injection (`--fault NAME[:RATIO]` or the job's `faults:` list), for tests and demos.
//!
//! - `crash`: navigate the session's tab to `chrome://crash` (the renderer dies).
//! - `hang-page`: run an infinite JavaScript loop in the page.
//! - `hang-server`: navigate to the embedded site's `/hang`, which never answers.
//! - `kill-browser`: SIGKILL the browser process mid-session.
//! - `abandon`: start that session's browser detached (own session, no parent-death signal) and
//!   skip its cleanup, like the buggy bots this project exists for. The sidecar must catch it.
//!
//! RATIO (0 < RATIO ≤ 1, default 1) is the fraction of sessions that get the fault, spread
//! evenly over the run: session `i` gets it when `floor((i+1)·r) > floor(i·r)`. A fault applies
//! to a session's first attempt only, so a retry shows whether the runner recovers.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    Crash,
    HangPage,
    HangServer,
    KillBrowser,
    Abandon,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Crash,
        Fault::HangPage,
        Fault::HangServer,
        Fault::KillBrowser,
        Fault::Abandon,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::HangPage => "hang-page",
            Fault::HangServer => "hang-server",
            Fault::KillBrowser => "kill-browser",
            Fault::Abandon => "abandon",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `--fault` argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultSpec {
    pub fault: Fault,
    pub ratio: f64,
}

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, ratio) = match s.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        let fault = Fault::ALL
            .into_iter()
            .find(|f| f.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown fault `{name}` (expected one of crash, hang-page, hang-server, kill-browser, abandon)"
                )
            })?;
        let ratio = match ratio {
            None => 1.0,
            Some(r) => r
                .parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0 && *r <= 1.0)
                .ok_or_else(|| format!("fault ratio `{r}` must be a number in (0, 1]"))?,
        };
        Ok(FaultSpec { fault, ratio })
    }
}

impl<'de> serde::Deserialize<'de> for FaultSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which faults hit which session.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    specs: Vec<FaultSpec>,
}

impl FaultPlan {
    pub fn new(specs: Vec<FaultSpec>) -> Self {
        Self { specs }
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Faults for session `index` (0-based), in a fixed order.
    pub fn for_session(&self, index: u64) -> Vec<Fault> {
        let i = index as f64;
        self.specs
            .iter()
            .filter(|s| ((i + 1.0) * s.ratio).floor() > (i * s.ratio).floor())
            .map(|s| s.fault)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_ratios() {
        let s: FaultSpec = "crash".parse().unwrap();
        assert_eq!((s.fault, s.ratio), (Fault::Crash, 1.0));
        let s: FaultSpec = "abandon:0.25".parse().unwrap();
        assert_eq!((s.fault, s.ratio), (Fault::Abandon, 0.25));
        assert!("boom"
            .parse::<FaultSpec>()
            .unwrap_err()
            .contains("unknown fault"));
        assert!("crash:0".parse::<FaultSpec>().is_err());
        assert!("crash:1.5".parse::<FaultSpec>().is_err());
        assert!("crash:x".parse::<FaultSpec>().is_err());
    }

    #[test]
    fn ratio_spreads_evenly() {
        let plan = FaultPlan::new(vec!["hang-page:0.25".parse().unwrap()]);
        let hit: Vec<u64> = (0..8)
            .filter(|&i| !plan.for_session(i).is_empty())
            .collect();
        assert_eq!(hit, vec![3, 7]);
        let all = FaultPlan::new(vec!["kill-browser".parse().unwrap()]);
        assert!((0..5).all(|i| all.for_session(i) == vec![Fault::KillBrowser]));
        assert!(FaultPlan::default().for_session(0).is_empty());
    }
}
