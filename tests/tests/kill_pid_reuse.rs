//! PID reuse, forced for real: the kill engine must not signal a process whose start time differs
//! from the one it judged, even when the PID is the same.
//!
//! The outer test re-runs this test binary as PID 1 of a private PID namespace (`unshare --pid
//! --fork --mount-proc`), where `/proc/sys/kernel/ns_last_pid` can be written: the inner test
//! judges a process, ends it, makes the kernel hand the same PID to a new process, then asks the
//! engine to kill the judged one. See: issue 4, "PID reuse".

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leakwarden::kill::{read_start_ticks, Context, Engine, Outcome, Target};

const INNER: &str = "LEAKWARDEN_PID_REUSE_INNER";

fn spawn_sleep() -> Child {
    Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

#[test]
fn the_engine_never_signals_a_process_that_took_a_judged_pid() {
    if std::env::var_os(INNER).is_some() {
        return inner();
    }
    assert!(
        leakwarden_tests::can_unshare(),
        "needs root to create a PID namespace"
    );
    let me = std::env::current_exe().expect("current_exe");
    let mut cmd = leakwarden_tests::in_pid_namespace(&me);
    cmd.args([
        "the_engine_never_signals_a_process_that_took_a_judged_pid",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(INNER, "1");
    let out = leakwarden_tests::run(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        leakwarden_tests::describe(&cmd, &out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pid reused:"),
        "{}",
        leakwarden_tests::describe(&cmd, &out)
    );
}

fn inner() {
    assert_eq!(
        std::process::id(),
        1,
        "the inner test runs as PID 1 of its namespace"
    );
    let proc_root = std::path::Path::new("/proc");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = Context {
        rule: "pid-reuse-test",
        action: "terminate",
        reason: "test",
    };
    // Judge a process: its PID and start time.
    let mut judged = spawn_sleep();
    let pid = judged.id() as i32;
    let mut target = None;
    // Let the start time tick over so the next process cannot share it.
    std::thread::sleep(Duration::from_millis(50));
    if let Ok(Some(st)) = read_start_ticks(proc_root, pid) {
        target = Some(Target {
            pid,
            start_ticks: st,
            comm: "sleep".into(),
            family: None,
        });
    }
    let target = target.expect("judged process has a start time");
    // It ends before the engine acts (as a process can between scan and kill)...
    judged.kill().expect("kill judged");
    judged.wait().expect("reap judged");
    std::thread::sleep(Duration::from_millis(30));
    // ...and the kernel hands its PID to a newcomer.
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
        .expect("write ns_last_pid");
    let mut newcomer = spawn_sleep();
    assert_eq!(newcomer.id() as i32, pid, "the newcomer got the judged PID");
    let now = read_start_ticks(proc_root, pid)
        .expect("read")
        .expect("newcomer alive");
    assert_ne!(
        now, target.start_ticks,
        "a new process has a new start time"
    );
    let outcome = rt.block_on(Engine::new(proc_root, Vec::new()).kill(
        &ctx,
        &[target],
        Duration::from_millis(200),
    ));
    assert_eq!(outcome, vec![Outcome::IdentityChanged]);
    assert!(
        newcomer.try_wait().expect("try_wait").is_none(),
        "the newcomer must not have been signalled"
    );
    println!("pid reused: {pid}; engine said {:?}", outcome[0]);
    newcomer.kill().expect("kill newcomer");
    let st = newcomer.wait().expect("wait newcomer");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "ended by our own kill");
}
