//! Issue 15: text logs carry colour only on a terminal, and never with `NO_COLOR` set — logs
//! redirected to a file or read by journald must hold no escape codes.

use std::process::Command;

use leakwarden_tests::{bin, describe, run};

/// The first seconds of `leakwarden watch` (dry-run, nothing to do), its stderr as bytes; run
/// through `script` (a pseudo-terminal) when `tty`.
fn watch_log(tty: bool, no_color: bool) -> Vec<u8> {
    let d = tempfile::tempdir().expect("tempdir");
    let pol = d.path().join("p.yaml");
    std::fs::write(
        &pol,
        format!("dry_run: true\nstale_profiles:\n  roots: ['{}']\n", d.path().display()),
    )
    .expect("write");
    let cmd = format!(
        "timeout -s KILL 2 {} watch --dry-run --listen 127.0.0.1:0 --policy {} --interval 1s",
        bin("leakwarden").display(),
        pol.display()
    );
    let mut c = if tty {
        let mut c = Command::new("script");
        c.args(["-qefc", &format!("{cmd} 1>&2"), "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &cmd]);
        c
    };
    c.env_remove("NO_COLOR");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    let out = run(&mut c);
    let mut all = out.stderr.clone();
    all.extend_from_slice(&out.stdout);
    assert!(
        String::from_utf8_lossy(&all).contains("leakwarden watching"),
        "{}",
        describe(&c, &out)
    );
    all
}

fn has_escape(b: &[u8]) -> bool {
    b.contains(&0x1b)
}

#[test]
fn logs_are_plain_text_unless_on_a_terminal_without_no_color() {
    assert!(!has_escape(&watch_log(false, false)), "escape codes in a redirected log");
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIP: `script` (util-linux) not installed: the terminal case is not checked");
        return;
    }
    assert!(has_escape(&watch_log(true, false)), "no colour on a terminal");
    assert!(!has_escape(&watch_log(true, true)), "colour on a terminal despite NO_COLOR");
}
