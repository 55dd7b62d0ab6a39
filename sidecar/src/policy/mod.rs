//! Policy: which process families to watch, which rules to enforce, what is protected.
//!
//! [`schema`] is the YAML schema (serde, unknown fields rejected); [`load`]/[`parse`] turn text
//! into a validated [`Policy`] or a [`PolicyError`] that names the file, line and column.

pub mod bounds;
pub mod schema;
pub mod units;

#[cfg(test)]
mod fuzz;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use schema::*;

/// The built-in default policy (families for Chromium, chromedriver and crashpad; an
/// orphaned-tree kill rule; report-only leak, FD and zombie rules).
pub const DEFAULT_POLICY_YAML: &str = include_str!("default.yaml");

/// Where a policy came from, for messages.
pub const BUILTIN_SOURCE: &str = "<built-in default policy>";

/// Why a policy was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read policy: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    InvalidUnlocated { path: PathBuf, message: String },
}

impl PolicyError {
    /// Line and column, when known.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            PolicyError::Invalid { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

/// Read and validate a policy file.
///
/// Only a regular file is read, and at most [`bounds::MAX_POLICY_BYTES`] of it: the daemon
/// reloads from its own loop, and a FIFO (whose `open` blocks until a writer comes) or a device
/// such as `/dev/zero` (which never ends) in the policy's place must not stop it.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = read_bounded(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: opening a FIFO for reading does not wait for a writer. It does not change
    // how a regular file reads.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(bounds::MAX_POLICY_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The built-in default policy.
pub fn builtin() -> Policy {
    match parse(DEFAULT_POLICY_YAML, Path::new(BUILTIN_SOURCE)) {
        Ok(p) => p,
        // The embedded file is checked by a unit test; this branch cannot be reached by input.
        Err(e) => panic!("built-in policy is invalid: {e}"),
    }
}

/// Parse and validate policy text; `path` is used in messages only.
///
/// The work is bounded whatever the text: at most [`bounds::MAX_POLICY_BYTES`] of it, at most
/// [`bounds::MAX_PATTERNS`] regexes of bounded size, and serde_norway's own limits on nesting
/// (128 levels) and on alias expansion (100 × the document's events).
pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    if text.len() > bounds::MAX_POLICY_BYTES {
        return Err(PolicyError::InvalidUnlocated {
            path: path.to_path_buf(),
            message: format!(
                "the policy is larger than {} bytes (at most 256KiB)",
                bounds::MAX_POLICY_BYTES
            ),
        });
    }
    if let Some((line, column)) = too_many_brackets(text) {
        return Err(PolicyError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message: format!(
                "more than {} `[` and `{{` in one policy (flow collections and regex brackets \
                 count alike): write long lists in block style",
                bounds::MAX_BRACKETS
            ),
        });
    }
    let parsed = {
        let _budget = schema::PatternBudget::start(bounds::MAX_PATTERNS);
        serde_norway::from_str::<Policy>(text)
    };
    let mut policy: Policy = parsed.map_err(|e| {
        let message = e.to_string();
        // serde_norway appends " at line L column C" to its message; keep ours clean.
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        match e.location() {
            Some(loc) => PolicyError::Invalid {
                path: path.to_path_buf(),
                line: loc.line(),
                column: loc.column(),
                message,
            },
            None => PolicyError::InvalidUnlocated {
                path: path.to_path_buf(),
                message: if message.contains("repetition limit") {
                    format!("{message}: aliases (`*name`) expand to too much")
                } else {
                    message
                },
            },
        }
    })?;
    if policy.families.is_empty() {
        policy.families = builtin_families();
    }
    validate(&policy, text, path)?;
    Ok(policy)
}

/// Where the bracket past [`bounds::MAX_BRACKETS`] is, if there is one. Comment lines (first
/// non-blank `#`) are skipped: libyaml reads such a line as a comment or as scalar text, never as
/// structure. Anything else counts, so this can only overcount libyaml's flow nesting.
fn too_many_brackets(text: &str) -> Option<(usize, usize)> {
    let mut seen = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for (col, c) in line.chars().enumerate() {
            if c == '[' || c == '{' {
                seen += 1;
                if seen > bounds::MAX_BRACKETS {
                    return Some((i + 1, col + 1));
                }
            }
        }
    }
    None
}

fn builtin_families() -> Vec<Family> {
    serde_norway::from_str::<Policy>(DEFAULT_POLICY_YAML)
        .map(|p| p.families)
        .unwrap_or_default()
}

/// Semantic checks serde cannot do. Errors are located by finding the offending text in the
/// file (the first line after `after` that contains `needle`).
fn validate(policy: &Policy, text: &str, path: &Path) -> Result<(), PolicyError> {
    let err_nth = |needle: &str, nth: usize, message: String| -> PolicyError {
        match locate(text, needle, nth) {
            Some((line, column)) => PolicyError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            },
            None => PolicyError::InvalidUnlocated {
                path: path.to_path_buf(),
                message,
            },
        }
    };
    let err = |needle: &str, message: String| -> PolicyError { err_nth(needle, 0, message) };
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };

    let mut families = HashSet::new();
    for f in &policy.families {
        if !label_ok(&f.name) {
            return Err(err(
                &f.name,
                format!(
                    "family name {:?} must be 1-64 characters of [A-Za-z0-9._-] (it is a metric label)",
                    f.name
                ),
            ));
        }
        if !families.insert(f.name.as_str()) {
            return Err(err(
                &f.name,
                format!("family {:?} is defined twice", f.name),
            ));
        }
        if f.matchers.is_empty() {
            return Err(err(
                &f.name,
                format!("family {:?} has no matcher under `match`", f.name),
            ));
        }
        if f.matchers.iter().any(Matcher::is_empty) {
            return Err(err(
                &f.name,
                format!(
                    "family {:?} has an empty matcher: give comm, exe, cmdline or uid",
                    f.name
                ),
            ));
        }
    }
    if policy.protect.iter().any(Matcher::is_empty) {
        return Err(err(
            "protect",
            "an empty matcher under `protect` would protect everything; give comm, exe, cmdline or uid"
                .into(),
        ));
    }

    let mut rules = HashSet::new();
    for r in &policy.rules {
        if !label_ok(&r.name) {
            return Err(err(
                &r.name,
                format!(
                    "rule name {:?} must be 1-64 characters of [A-Za-z0-9._-] (it is a metric label)",
                    r.name
                ),
            ));
        }
        if !rules.insert(r.name.as_str()) {
            return Err(err_nth(
                &r.name,
                1,
                format!("rule {:?} is defined twice", r.name),
            ));
        }
        for fam in &r.family {
            if !families.contains(fam.as_str()) {
                let known: Vec<&str> = policy.families.iter().map(|f| f.name.as_str()).collect();
                return Err(err(
                    fam,
                    format!(
                        "rule {:?} names unknown family {:?} (known: {})",
                        r.name,
                        fam,
                        known.join(", ")
                    ),
                ));
            }
        }
        if r.when.is_empty() {
            return Err(err(
                &r.name,
                format!(
                    "rule {:?} has no condition under `when`: it would match every process",
                    r.name
                ),
            ));
        }
        // Numbers (grace, fd_ratio_above, …) are range-checked while parsing: `bounds`.
    }
    Ok(())
}

/// 1-based line and column of the `nth` (0-based) occurrence of `needle` as a whole token
/// (not part of a longer name) outside comments.
fn locate(text: &str, needle: &str, nth: usize) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return None;
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let mut seen = 0;
    for (i, line) in text.lines().enumerate() {
        let code = strip_comment(line);
        let mut from = 0;
        while let Some(off) = code.get(from..).and_then(|rest| rest.find(needle)) {
            let at = from + off;
            let end = at + needle.len();
            let before_ok = code[..at].chars().next_back().is_none_or(|c| !word(c));
            let after_ok = code[end..].chars().next().is_none_or(|c| !word(c));
            if before_ok && after_ok {
                if seen == nth {
                    return Some((i + 1, code[..at].chars().count() + 1));
                }
                seen += 1;
            }
            from = end;
        }
    }
    None
}

/// A YAML line without its comment (a `#` at the start or after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

impl Policy {
    /// The family with this name.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// True when the policy can only be matched with cmdline or exe for some family: then
    /// those facts must be read for every process, not just for comm candidates.
    pub fn needs_exe_or_cmdline_for_all(&self) -> bool {
        self.families
            .iter()
            .flat_map(|f| f.matchers.iter())
            .chain(self.protect.iter())
            .any(|m| m.comm.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Policy, PolicyError> {
        parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn builtin_policy_is_valid_and_has_the_three_families() {
        let pol = builtin();
        let names: Vec<_> = pol.families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["chromium", "chromedriver", "crashpad"]);
        assert!(pol.rules.iter().any(|r| r.action == Action::KillTree));
    }

    #[test]
    fn builtin_chromium_family_matches_the_real_binary_and_not_decoys() {
        let pol = builtin();
        let fam = pol.family("chromium").unwrap();
        let m = |comm: &str, exe: Option<&str>| {
            fam.matchers.iter().any(|m| m.matches(comm, exe, None, 0))
        };
        assert!(m("chromium", Some("/usr/lib/chromium/chromium")));
        assert!(m("chrome", None));
        assert!(m("ThreadPoolForeg", Some("/opt/google/chrome/chrome")));
        assert!(!m("chromium-notes", Some("/usr/local/bin/chromium-notes")));
        assert!(!m("bash", Some("/usr/bin/bash")));
    }

    #[test]
    fn empty_policy_gets_builtin_families() {
        let pol = p("dry_run: true\n").unwrap();
        assert!(pol.dry_run);
        assert_eq!(pol.families.len(), 3);
        assert!(pol.rules.is_empty());
    }

    #[test]
    fn typo_in_a_field_is_a_located_error() {
        let e = p("rules:\n  - name: r\n    when:\n      orphaned_fro: 30s\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("test.yaml:4:"), "{msg}");
        assert!(msg.contains("orphaned_fro"), "{msg}");
    }

    #[test]
    fn bad_duration_is_a_located_error() {
        let e = p("rules:\n  - name: r\n    when:\n      orphaned_for: 30 parsecs\n").unwrap_err();
        assert_eq!(e.location().map(|l| l.0), Some(4), "{e}");
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn bad_regex_is_a_located_error() {
        let e = p("families:\n  - name: x\n    match:\n      - comm: '(unclosed'\n").unwrap_err();
        assert_eq!(e.location().map(|l| l.0), Some(4), "{e}");
        assert!(e.to_string().contains("invalid regex"), "{e}");
    }

    #[test]
    fn unknown_family_in_rule_is_located() {
        let e = p("rules:\n  - name: r\n    family: chromum\n    when: {age: 1h}\n").unwrap_err();
        assert_eq!(e.location(), Some((3, 13)), "{e}");
        assert!(e.to_string().contains("unknown family"), "{e}");
    }

    #[test]
    fn rule_without_condition_is_rejected() {
        let e = p("rules:\n  - name: everything\n    action: kill-tree\n").unwrap_err();
        assert!(e.to_string().contains("no condition"), "{e}");
    }

    #[test]
    fn empty_protect_matcher_is_rejected() {
        assert!(p("protect:\n  - {}\n").is_err());
    }

    #[test]
    fn full_rule_parses() {
        let pol = p(concat!(
            "dry_run: false\nmax_kills_per_minute: 5\n",
            "protect:\n  - cmdline: 'keep-me'\n",
            "rules:\n",
            "  - name: big\n    family: chromium\n    role: renderer\n",
            "    when:\n      rss_above: 2GiB\n      fds_above: 1000\n      fd_ratio_above: 0.8\n",
            "      age: 1h\n      leak: {resource: fds, for: 10m}\n",
            "      zombie_parent: {min_zombies: 3, for: 30s}\n",
            "    action: terminate\n    grace: 2s\n",
        ))
        .unwrap();
        let r = &pol.rules[0];
        assert_eq!(r.when.rss_above.unwrap().0, 2 << 30);
        assert_eq!(r.action, Action::Terminate);
        assert_eq!(r.grace.0.as_secs(), 2);
        assert_eq!(r.role, vec!["renderer".to_string()]);
        assert_eq!(pol.max_kills_per_minute, 5);
    }
}
