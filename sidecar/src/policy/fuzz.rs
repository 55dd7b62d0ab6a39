//! What a stranger can do with a policy file: arbitrary text, mutations of valid policies, and
//! the classic YAML attacks (alias bombs, deep nesting, sheer size, a FIFO or `/dev/zero` in
//! place of the file). The parser must never panic, must answer with a located error or a clear
//! message, and must do bounded work: see `bounds` for the limits these tests hold it to.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::bounds::*;
use super::*;

const VALID: [&str; 4] = [
    DEFAULT_POLICY_YAML,
    include_str!("../../../tests/fixtures/policies/valid/readme-example.yaml"),
    include_str!("../../../tests/fixtures/policies/valid/kill-tree-fast.yaml"),
    include_str!("../../../tests/fixtures/policies/valid/minimal.yaml"),
];

fn p(text: &str) -> Result<Policy, PolicyError> {
    parse(text, Path::new("fuzz.yaml"))
}

/// Whatever the input, an accepted policy holds only values inside the documented bounds, and a
/// rejected one says where (a line and column inside the text) or says why.
fn check_outcome(text: &str, r: &Result<Policy, PolicyError>) -> Result<(), TestCaseError> {
    match r {
        Ok(pol) => {
            prop_assert!(u64::from(pol.max_kills_per_minute) <= MAX_KILLS_PER_MINUTE);
            prop_assert!(!pol.families.is_empty());
            prop_assert!(
                pol.leak.window.0 >= MIN_LEAK_WINDOW && pol.leak.window.0 <= MAX_LEAK_WINDOW
            );
            prop_assert!((MIN_SAMPLES..=MAX_SAMPLES).contains(&pol.leak.min_samples));
            prop_assert!(pol.leak.alpha > 0.0 && pol.leak.alpha < 0.5);
            let s = pol.leak.min_relative_slope_per_hour;
            prop_assert!((0.0..=MAX_RELATIVE_SLOPE_PER_HOUR).contains(&s));
            prop_assert!(pol.stale_profiles.older_than.0 <= MAX_DURATION);
            for r in &pol.rules {
                prop_assert!(!r.when.is_empty());
                prop_assert!(r.grace.0 <= MAX_GRACE);
                let w = &r.when;
                for d in [w.orphaned_for, w.age].into_iter().flatten() {
                    prop_assert!(d.0 <= MAX_DURATION);
                }
                prop_assert!(w.rss_above.is_none_or(|b| b.0 <= MAX_SIZE));
                prop_assert!(w.fds_above.is_none_or(|n| n <= MAX_FDS));
                prop_assert!(w.fd_ratio_above.is_none_or(|x| (0.0..=1.0).contains(&x)));
                prop_assert!(w.leak.as_ref().is_none_or(|l| l.for_.0 <= MAX_DURATION));
                if let Some(z) = &w.zombie_parent {
                    prop_assert!(z.for_.0 <= MAX_DURATION);
                    prop_assert!(z.min_zombies >= 1 && u64::from(z.min_zombies) <= MAX_MIN_ZOMBIES);
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("fuzz.yaml:"), "{}", msg);
            let detail = msg.splitn(4, ':').last().unwrap_or_default().trim();
            prop_assert!(!detail.is_empty(), "an empty message: {:?}", msg);
            if let Some((line, column)) = e.location() {
                let lines = text.lines().count().max(1);
                prop_assert!(
                    line >= 1 && line <= lines + 1,
                    "line {} of {}: {}",
                    line,
                    lines,
                    msg
                );
                prop_assert!(column >= 1, "{}", msg);
            }
        }
    }
    Ok(())
}

/// Pieces of YAML (and of attacks on it) that mutations insert.
const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "[",
    "]",
    "{",
    "}",
    ": ",
    ":",
    "\n",
    "  ",
    "- ",
    "'",
    "\"",
    "# ",
    ",",
    "? ",
    "<<: *a",
    "!!binary ",
    "!!str ",
    "!!int ",
    "!<tag> ",
    "|\n",
    ">-\n",
    "\t",
    "\u{0}",
    "\u{feff}",
    "é",
    "…",
    "18446744073709551615",
    "-9223372036854775808",
    "-1",
    "0",
    "1e999",
    "1e-999",
    ".nan",
    ".inf",
    "-.inf",
    "~",
    "null",
    "0x10",
    "0o7",
    "1_000",
    "99999999999999999999d",
    "365d",
    "365d1ms",
    "10m1s",
    "1PiB",
    "2PiB",
    "0.5",
    "(",
    "(?",
    "\\",
    "a{99999}",
    "\\w{99}",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "kill-tree",
    "rules",
    "when",
    "grace",
    "leak",
    "families",
    "match",
    "comm",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Number { nth: usize, with: String },
    DuplicateLine { nth: usize },
    DropLine { nth: usize },
    SwapLines { a: usize, b: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (
            any::<usize>(),
            prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| n.to_string()),
                "[0-9]{1,30}(ms|s|m|h|d|B|KiB|MiB|GiB|TiB|PiB|PB)?",
            ]
        )
            .prop_map(|(nth, with)| Mutation::Number { nth, with }),
        any::<usize>().prop_map(|nth| Mutation::DuplicateLine { nth }),
        any::<usize>().prop_map(|nth| Mutation::DropLine { nth }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// Apply a mutation on character boundaries (the text stays a `str`).
fn apply(text: &str, m: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len().max(1);
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let nl = lines.len().max(1);
    match m {
        Mutation::Delete { at, len } => {
            let a = at % n;
            let b = (a + len).min(chars.len());
            chars[..a].iter().chain(&chars[b..]).collect()
        }
        Mutation::Insert { at, token } => {
            let a = (at % n).min(chars.len());
            let mut s: String = chars[..a].iter().collect();
            s.push_str(TOKENS[*token]);
            s.extend(&chars[a..]);
            s
        }
        Mutation::Number { nth, with } => {
            // The nth run of digits in the text, replaced.
            let re = regex::Regex::new(r"[0-9]+(\.[0-9]+)?[a-zA-Z]*").expect("regex");
            let runs: Vec<_> = re.find_iter(text).collect();
            match runs.get(nth % runs.len().max(1)) {
                Some(r) => format!("{}{}{}", &text[..r.start()], with, &text[r.end()..]),
                None => text.to_string(),
            }
        }
        Mutation::DuplicateLine { nth } => {
            let i = nth % nl;
            if let Some(l) = lines.get(i).copied() {
                lines.insert(i, l);
            }
            lines.concat()
        }
        Mutation::DropLine { nth } => {
            let i = nth % nl;
            let len = lines.len();
            if i < len {
                lines.remove(i);
            }
            lines.concat()
        }
        Mutation::SwapLines { a, b } => {
            let len = lines.len();
            if len > 0 {
                lines.swap(a % len, b % len);
            }
            lines.concat()
        }
        Mutation::Truncate { at } => chars[..at % n.min(chars.len() + 1)].iter().collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn mutated_valid_policies_never_panic_and_stay_in_bounds(
        which in 0..VALID.len(),
        ms in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut text = VALID[which].to_string();
        for m in &ms {
            text = apply(&text, m);
        }
        let r = p(&text);
        check_outcome(&text, &r)?;
    }

    #[test]
    fn yaml_shaped_noise_never_panics(
        text in "[a-z_:{}\\[\\],&*!|>'\"#\\- \n0-9.~]{0,300}",
    ) {
        let r = p(&text);
        check_outcome(&text, &r)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let r = p(&text);
        check_outcome(&text, &r)?;
    }

    /// Any value in any numeric field: accepted exactly when inside its bound, never a panic.
    #[test]
    fn any_number_in_any_field_is_in_bounds_or_rejected(
        field in 0usize..12,
        value in prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| format!("{n:?}")),
            "[0-9]{1,25}(\\.[0-9]{1,3})?(ms|s|m|h|d|B|KiB|MiB|GiB|TiB|PiB|KB|MB|GB|TB|PB)?",
            Just(".nan".to_string()),
            Just("-.inf".to_string()),
        ],
    ) {
        let rule = |cond: &str| format!("rules:\n  - name: r\n    when: {{{cond}}}\n");
        let text = match field {
            0 => rule(&format!("orphaned_for: {value}")),
            1 => rule(&format!("age: {value}")),
            2 => rule(&format!("rss_above: {value}")),
            3 => rule(&format!("fds_above: {value}")),
            4 => rule(&format!("fd_ratio_above: {value}")),
            5 => rule(&format!("leak: {{resource: fds, for: {value}}}")),
            6 => rule(&format!("zombie_parent: {{min_zombies: {value}}}")),
            7 => format!("{}    grace: {value}\n", rule("age: 1h")),
            8 => format!("max_kills_per_minute: {value}\n"),
            9 => format!("leak:\n  window: {value}\n"),
            10 => format!("leak:\n  min_samples: {value}\n  alpha: 0.01\n"),
            _ => format!("stale_profiles:\n  older_than: {value}\n"),
        };
        let r = p(&text);
        check_outcome(&text, &r)?;
    }
}

// === attacks that need no randomness ===

/// The classic billion laughs (ten levels of nine aliases: 9^9 scalars when expanded), aimed at
/// a field that buffers whatever it is given before deciding its shape (`family`: one name or a
/// list). serde_norway's repetition limit (jumps ≤ 100 × events) must cut it short.
#[test]
fn billion_laughs_is_cut_short() {
    let mut bomb = String::from("[&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]");
    for i in 1..10 {
        bomb.push_str(&format!(
            ", &l{i} [{}]",
            vec![format!("*l{}", i - 1); 9].join(", ")
        ));
    }
    bomb.push(']');
    let text = format!("rules:\n  - name: r\n    when: {{age: 1h}}\n    family: {bomb}\n");
    let t = Instant::now();
    let e = p(&text).expect_err("a bomb is no policy");
    eprintln!("billion laughs rejected in {:?}: {e}", t.elapsed());
    assert!(
        e.to_string().contains("repetition limit exceeded: aliases"),
        "{e}"
    );
}

/// An alias repeated instead of nested: one family (with a regex) named 20,000 times. Each alias
/// is deserialized anew — and each of its regexes compiled anew — so without a budget a file of
/// 100 KB compiles 20,000 regexes.
#[test]
fn an_aliased_family_repeated_does_not_compile_its_regex_again_and_again() {
    let mut text = String::from("families:\n  - &f {name: a, match: [{cmdline: '[a-z]{200}x'}]}\n");
    for _ in 0..20_000 {
        text.push_str("  - *f\n");
    }
    let t = Instant::now();
    let e = p(&text).expect_err("more regexes than the budget");
    eprintln!("aliased regex bomb rejected in {:?}: {e}", t.elapsed());
    assert!(
        e.to_string()
            .contains(&format!("more than {MAX_PATTERNS} regular expressions")),
        "{e}"
    );
}

/// Regexes written out one by one: the one past the budget is refused at its own line.
#[test]
fn regexes_past_the_budget_are_refused_at_the_first_one_too_many() {
    let mut text = String::from("protect:\n");
    for i in 0..MAX_PATTERNS + 10 {
        text.push_str(&format!("  - cmdline: 'keep-{i}'\n"));
    }
    let e = p(&text).expect_err("more regexes than the budget");
    assert_eq!(e.location().map(|l| l.0), Some(MAX_PATTERNS + 2), "{e}");
    // Exactly the budget is fine.
    let mut ok = String::from("protect:\n");
    for i in 0..MAX_PATTERNS {
        ok.push_str(&format!("  - cmdline: 'keep-{i}'\n"));
    }
    assert!(p(&ok).is_ok());
}

/// One regex whose compiled program is large (a Unicode class repeated) is refused.
#[test]
fn a_regex_that_compiles_too_large_is_refused() {
    let e = p("protect:\n  - cmdline: '\\w{50}'\n").expect_err("too large");
    assert!(e.to_string().contains("size limit"), "{e}");
    assert_eq!(e.location().map(|l| l.0), Some(2), "{e}");
}

/// 200,000 nested brackets (400 KB) kept libyaml busy for minutes before serde_norway's nesting
/// limit saw any of it: refused at the bracket past the budget, before YAML runs.
#[test]
fn deep_flow_nesting_is_refused_before_yaml_sees_it() {
    let depth = 100_000;
    let text = format!(
        "rules:\n  - name: r\n    when: {{age: 1h}}\n    family: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let t = Instant::now();
    let e = p(&text).expect_err("too deep");
    eprintln!("deep flow nesting rejected in {:?}: {e}", t.elapsed());
    // Line 3 holds one `{`, so the 1,024th bracket of line 4 (column 13 is its first) is the
    // first one too many.
    assert_eq!(e.location(), Some((4, 12 + MAX_BRACKETS)), "{e}");
    assert!(e.to_string().contains("more than 1024 `[` and `{`"), "{e}");
    let text = format!("dry_run: {}x{}\n", "{".repeat(depth), "}".repeat(depth));
    assert!(p(&text).is_err());
    // Brackets on comment lines are not counted: they are never structure.
    let text = format!("# {}\ndry_run: true\n", "[".repeat(depth));
    assert!(p(&text).is_ok());
}

/// Nesting under the bracket budget, and block-style nesting (which costs libyaml nothing
/// special), meet serde_norway's recursion limit.
#[test]
fn deep_nesting_within_the_budget_meets_the_recursion_limit() {
    let text = format!(
        "rules:\n  - name: r\n    when: {{age: 1h}}\n    family: {}{}\n",
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let e = p(&text).expect_err("too deep");
    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
    let text = format!(
        "rules:\n  - name: r\n    when: {{age: 1h}}\n    family:\n      {}x\n",
        "- ".repeat(50_000)
    );
    let e = p(&text).expect_err("too deep");
    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
}

/// A policy bigger than [`MAX_POLICY_BYTES`] is refused before YAML sees it.
#[test]
fn a_policy_past_the_size_limit_is_refused() {
    let mut text = String::from("dry_run: true\n");
    while text.len() <= MAX_POLICY_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let e = p(&text).expect_err("too big");
    assert!(e.to_string().contains("at most 256KiB"), "{e}");
    text.truncate(MAX_POLICY_BYTES - 100);
    if let Some(i) = text.rfind('\n') {
        text.truncate(i + 1);
    }
    assert!(p(&text).is_ok());
}

/// Loading a FIFO in place of the policy (anyone who can write the directory can put one
/// there) must not block the daemon's loop forever: it is refused as not a regular file.
#[test]
fn load_refuses_a_fifo_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("policy.yaml");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .expect("mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(load(&f).map(|_| ()).map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("load returns instead of blocking on a FIFO");
    let e = r.expect_err("a FIFO is no policy");
    assert!(e.contains("not a regular file"), "{e}");
}

/// `/dev/zero` never ends: it is refused as not a regular file, not read until memory runs out.
#[test]
fn load_refuses_an_endless_device() {
    let e = load(Path::new("/dev/zero")).expect_err("not a policy");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

/// A regular file that is too large is refused after reading at most the limit.
#[test]
fn load_refuses_a_file_past_the_size_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("big.yaml");
    std::fs::write(&f, "#".repeat(MAX_POLICY_BYTES + 1)).expect("write");
    let e = load(&f).expect_err("too big");
    assert!(e.to_string().contains("at most 256KiB"), "{e}");
}
