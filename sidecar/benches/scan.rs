//! One full scan of /proc, against the raw floor (read stat and statm and stat() fd/ for every
//! process, nothing else). Spawns `LW_BENCH_PROCS` (default 1000) idle `sleep` processes first so
//! the per-process figures mean something on a quiet machine, and kills them by PID at the end.
//!
//! `cargo bench -p leakwarden --bench scan`; criterion prints time per iteration; divide by the
//! process count printed at the start for µs per process (tests/bench/sidecar-vs-peers.sh does).

use std::hint::black_box;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};

use criterion::{criterion_group, criterion_main, Criterion};
use leakwarden::policy;
use leakwarden::proc::ProcFs;
use leakwarden::snapshot::Scanner;

fn spawn_idle(n: usize) -> Vec<Child> {
    (0..n)
        .filter_map(|_| {
            Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .ok()
        })
        .collect()
}

fn raw_floor() -> usize {
    let mut n = 0;
    let mut buf = Vec::with_capacity(1024);
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        for f in ["stat", "statm"] {
            buf.clear();
            if let Ok(mut file) = std::fs::File::open(format!("/proc/{pid}/{f}")) {
                let _ = file.read_to_end(&mut buf);
            }
        }
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/fd")) {
            n += m.size() as usize;
        }
    }
    black_box(n)
}

fn bench(c: &mut Criterion) {
    let want: usize = std::env::var("LW_BENCH_PROCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut kids = spawn_idle(want);
    let pol = policy::builtin();
    let mut scanner = Scanner::new(ProcFs::new("/proc"));
    let procs = scanner.scan(&pol).map(|s| s.procs.len()).unwrap_or(0);
    eprintln!("processes visible: {procs}");
    let mut g = c.benchmark_group(format!("scan_{procs}_procs"));
    g.sample_size(30);
    g.bench_function("raw_floor", |b| b.iter(raw_floor));
    g.bench_function("full_scan", |b| {
        b.iter(|| black_box(scanner.scan(&pol).map(|s| s.procs.len()).unwrap_or(0)))
    });
    g.finish();
    for k in &mut kids {
        let _ = k.kill();
        let _ = k.wait();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
