//! The policy file's schema (YAML, serde). Unknown fields are errors everywhere, so a typo can
//! never silently disable a rule; regexes, durations and sizes are checked while parsing, so a bad
//! value is reported with its line and column. See README.md, "Policy reference".

use std::fmt;

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize, Serializer};

use super::bounds;
use super::units::{ByteSize, HumanDuration};

/// A whole policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// When true, rules are evaluated and reported but nothing is signalled.
    #[serde(default)]
    pub dry_run: bool,
    /// At most this many kill actions (each a process or a tree) in any 60 s window.
    #[serde(
        default = "default_max_kills_per_minute",
        deserialize_with = "bounds::max_kills_per_minute"
    )]
    pub max_kills_per_minute: u32,
    /// Processes no rule may touch, in addition to PID 1 and the sidecar itself (always protected).
    #[serde(default)]
    pub protect: Vec<Matcher>,
    /// Process families: what to watch. Empty means the built-in families.
    #[serde(default)]
    pub families: Vec<Family>,
    /// Rules: conditions and actions.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Leak detection settings.
    #[serde(default)]
    pub leak: LeakSettings,
    /// Stale profile directory detection.
    #[serde(default)]
    pub stale_profiles: StaleProfiles,
}

fn default_max_kills_per_minute() -> u32 {
    30
}

/// A family of processes: matched by any one of its matchers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// The `family` label value: short, lowercase, bounded.
    pub name: String,
    /// How members are grouped into trees.
    #[serde(default)]
    pub kind: FamilyKind,
    /// A process belongs to the family when any matcher matches.
    #[serde(rename = "match")]
    pub matchers: Vec<Matcher>,
}

/// How a family's processes form trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FamilyKind {
    /// A Chromium-like browser: roles from `--type=`, trees keyed by `--user-data-dir`.
    Browser,
    /// A browser driver (chromedriver): the browsers it starts join its tree.
    Driver,
    /// Crash handlers (chrome_crashpad_handler): tied to their browser through a unix socket.
    Crashpad,
    /// Anything else: each process's tree is its family subtree.
    #[default]
    Generic,
}

/// Matches a process. Every field given must match (they are ANDed); a matcher with no field is
/// rejected. Regexes are unanchored unless written with `^…$`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    /// Regex on `comm` (the kernel's 15-byte process name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<Pattern>,
    /// Regex on the executable's path (`/proc/PID/exe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Pattern>,
    /// Regex on the command line, arguments joined by single spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Pattern>,
    /// Numeric user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// A compiled regular expression that remembers its source text.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

/// A rule: when every condition holds for a process (or tree), take the action.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The `rule` label value.
    pub name: String,
    /// Families the rule applies to; empty means every family.
    #[serde(default, deserialize_with = "one_or_many")]
    pub family: Vec<String>,
    /// Only these Chromium roles (`browser`, `renderer`, `gpu-process`, …); empty means any.
    #[serde(default, deserialize_with = "one_or_many")]
    pub role: Vec<String>,
    /// Conditions, all of which must hold.
    #[serde(default)]
    pub when: Conditions,
    /// What to do.
    #[serde(default)]
    pub action: Action,
    /// Time between SIGTERM and SIGKILL.
    #[serde(default = "default_grace", deserialize_with = "bounds::grace")]
    pub grace: HumanDuration,
}

fn default_grace() -> HumanDuration {
    HumanDuration::from_secs(5)
}

/// Conditions of a rule. All given conditions must hold; a rule with none is rejected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// The process (or its tree) has had no owner for at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphaned_for: Option<HumanDuration>,
    /// The process has run at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<HumanDuration>,
    /// Resident memory above (per process; per tree for `kill-tree` rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_above: Option<ByteSize>,
    /// Open file descriptors above.
    #[serde(
        default,
        deserialize_with = "bounds::fds_above",
        skip_serializing_if = "Option::is_none"
    )]
    pub fds_above: Option<u64>,
    /// Open FDs divided by the soft RLIMIT_NOFILE above this ratio (0..1).
    #[serde(
        default,
        deserialize_with = "bounds::fd_ratio_above",
        skip_serializing_if = "Option::is_none"
    )]
    pub fd_ratio_above: Option<f64>,
    /// The leak detector's verdict has been "growing" for at least `for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak: Option<LeakCondition>,
    /// The process is a parent with at least `min_zombies` unreaped children for at least `for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zombie_parent: Option<ZombieCondition>,
}

/// A leak condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakCondition {
    /// Which resource is growing.
    pub resource: Resource,
    /// For how long the verdict has been "growing".
    #[serde(rename = "for", default)]
    pub for_: HumanDuration,
}

/// A zombie-parent condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZombieCondition {
    /// At least this many zombie children.
    #[serde(
        default = "default_min_zombies",
        deserialize_with = "bounds::min_zombies"
    )]
    pub min_zombies: u32,
    /// For at least this long.
    #[serde(rename = "for", default)]
    pub for_: HumanDuration,
}

fn default_min_zombies() -> u32 {
    1
}

/// A resource tracked by the leak detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Memory,
    Fds,
    Threads,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Memory, Resource::Fds, Resource::Threads];

    /// The `resource` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Fds => "fds",
            Resource::Threads => "threads",
        }
    }
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Report only (metrics, logs, `cleanup` output).
    #[default]
    Report,
    /// SIGTERM the process, SIGKILL after `grace`.
    Terminate,
    /// Terminate the whole browser tree: every member, its crashpad handlers, the profile's
    /// stragglers; SIGKILL after `grace`.
    KillTree,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Report => "report",
            Action::Terminate => "terminate",
            Action::KillTree => "kill-tree",
        }
    }
}

/// Leak detection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakSettings {
    /// How much history the detector looks at.
    #[serde(
        default = "default_leak_window",
        deserialize_with = "bounds::leak_window"
    )]
    pub window: HumanDuration,
    /// Fewest samples before a verdict is given.
    #[serde(
        default = "default_leak_min_samples",
        deserialize_with = "bounds::min_samples"
    )]
    pub min_samples: usize,
    /// Mann–Kendall significance level (two-sided).
    #[serde(default = "default_leak_alpha", deserialize_with = "bounds::alpha")]
    pub alpha: f64,
    /// Ignore growth slower than this fraction of the current value per hour (noise floor).
    #[serde(
        default = "default_leak_min_relative_slope",
        deserialize_with = "bounds::min_relative_slope"
    )]
    pub min_relative_slope_per_hour: f64,
}

fn default_leak_window() -> HumanDuration {
    HumanDuration::from_secs(600)
}
fn default_leak_min_samples() -> usize {
    10
}
fn default_leak_alpha() -> f64 {
    0.01
}
fn default_leak_min_relative_slope() -> f64 {
    0.05
}

impl Default for LeakSettings {
    fn default() -> Self {
        Self {
            window: default_leak_window(),
            min_samples: default_leak_min_samples(),
            alpha: default_leak_alpha(),
            min_relative_slope_per_hour: default_leak_min_relative_slope(),
        }
    }
}

/// Stale browser profile directories: which directories to look in and when one counts as stale.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleProfiles {
    /// The only directories whose entries are checked and removed. Default: the sidecar's TMPDIR
    /// and /tmp.
    #[serde(default)]
    pub roots: Vec<String>,
    /// When not empty: only directories owned by one of these uids are removed (a shared /tmp
    /// holds other users' data too).
    #[serde(default)]
    pub owners: Vec<u32>,
    /// Entry names that are browser scratch directories (regex on the file name).
    #[serde(default = "default_stale_patterns")]
    pub patterns: Vec<Pattern>,
    /// A directory no live process uses counts as stale once unmodified this long.
    #[serde(default = "default_stale_age")]
    pub older_than: HumanDuration,
    /// `cleanup --kill` and `watch` (unless dry-run) remove stale directories.
    #[serde(default = "default_true")]
    pub remove: bool,
}

fn default_stale_patterns() -> Vec<Pattern> {
    [
        r"^org\.chromium\.Chromium\.scoped_dir\.",
        r"^org\.chromium\.Chromium\.",
        r"^\.org\.chromium\.Chromium\.",
        r"^puppeteer_dev_(chrome_)?profile-",
        r"^playwright_chromiumdev_profile-",
        r"^leakwarden-run-",
    ]
    .iter()
    .filter_map(|s| regex::Regex::new(s).ok().map(Pattern))
    .collect()
}
fn default_stale_age() -> HumanDuration {
    HumanDuration::from_secs(120)
}
fn default_true() -> bool {
    true
}

impl Default for StaleProfiles {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            owners: Vec::new(),
            patterns: default_stale_patterns(),
            older_than: default_stale_age(),
            remove: true,
        }
    }
}

// === impl Pattern ===

impl Pattern {
    pub fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s)
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.0.as_str())
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// Regexes are compiled while parsing, so a bad one is reported at its line and column. Each is
/// size-limited and one parse compiles at most its [`PatternBudget`], so a hostile policy cannot
/// blow up memory or time — not even by naming one anchored regex through thousands of aliases.
impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !PatternBudget::take() {
            return Err(D::Error::custom(format!(
                "more than {} regular expressions in one policy",
                bounds::MAX_PATTERNS
            )));
        }
        regex::RegexBuilder::new(&s)
            .size_limit(bounds::PATTERN_SIZE_LIMIT)
            .dfa_size_limit(bounds::PATTERN_SIZE_LIMIT)
            .build()
            .map(Pattern)
            .map_err(|e| D::Error::custom(format!("invalid regex {s:?}: {e}")))
    }
}

thread_local! {
    /// Regexes the parse running on this thread may still compile (`None`: no parse running).
    static PATTERNS_LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// How many regexes one parse may compile. serde gives a `Deserialize` impl no context, so the
/// count lives in a thread-local that [`parse`](super::parse) sets for the length of one
/// `from_str` (deserialization runs on the caller's thread) and this guard restores.
pub(crate) struct PatternBudget {
    previous: Option<usize>,
}

impl PatternBudget {
    pub(crate) fn start(n: usize) -> Self {
        PatternBudget {
            previous: PATTERNS_LEFT.with(|c| c.replace(Some(n))),
        }
    }

    /// Take one regex from the running parse's budget; false when it is spent. Outside a
    /// parse (a `Pattern` deserialized directly) there is no budget.
    fn take() -> bool {
        PATTERNS_LEFT.with(|c| match c.get() {
            None => true,
            Some(0) => false,
            Some(n) => {
                c.set(Some(n - 1));
                true
            }
        })
    }
}

impl Drop for PatternBudget {
    fn drop(&mut self) {
        PATTERNS_LEFT.with(|c| c.set(self.previous));
    }
}

/// Accept `family: chromium` as well as `family: [chromium, chromedriver]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

// === impl Matcher ===

impl Matcher {
    /// True when every given field matches. `exe` and `cmdline` are optional facts (not read, or
    /// unreadable): a matcher that needs a missing fact does not match.
    pub fn matches(&self, comm: &str, exe: Option<&str>, cmdline: Option<&str>, uid: u32) -> bool {
        if let Some(p) = &self.comm {
            if !p.is_match(comm) {
                return false;
            }
        }
        if let Some(p) = &self.exe {
            match exe {
                Some(e) if p.is_match(e) => {}
                _ => return false,
            }
        }
        if let Some(p) = &self.cmdline {
            match cmdline {
                Some(c) if p.is_match(c) => {}
                _ => return false,
            }
        }
        if let Some(u) = self.uid {
            if u != uid {
                return false;
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.comm.is_none() && self.exe.is_none() && self.cmdline.is_none() && self.uid.is_none()
    }

    /// True when the matcher can be decided from comm and uid alone.
    pub fn needs_only_comm(&self) -> bool {
        self.exe.is_none() && self.cmdline.is_none()
    }
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.orphaned_for.is_none()
            && self.age.is_none()
            && self.rss_above.is_none()
            && self.fds_above.is_none()
            && self.fd_ratio_above.is_none()
            && self.leak.is_none()
            && self.zombie_parent.is_none()
    }
}
