//! Pure parsers for the `/proc` files leakwarden reads. Each takes the file's bytes (or text) and
//! returns `None`/a default for anything malformed: never a panic, whatever a process put in its
//! name or a fixture put in a file. Property tests at the bottom feed them arbitrary input.

/// The fields of `/proc/PID/stat` the programs use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// Field 2: any bytes but NUL, at most 15 of them (spaces, parentheses, newlines included).
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    /// Process group; 0 inside a PID namespace when the group's leader lives outside it.
    pub pgid: i32,
    /// Session; 0 like `pgid`.
    pub sid: i32,
    /// Kernel flags (field 9); [`PF_KTHREAD`] marks kernel threads.
    pub flags: u64,
    pub threads: u64,
    /// Clock ticks after boot (field 22). With the pid, the identity of a process.
    pub start_ticks: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Kernel thread flag in `/proc/PID/stat` field 9.
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// Parse `/proc/PID/stat`. comm may hold anything but NUL — spaces, parentheses, newlines — so it
/// is taken between the first `(` and the *last* `)`, and the other fields are counted after it.
pub fn parse_stat(buf: &[u8]) -> Option<Stat> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid = std::str::from_utf8(buf.get(..open)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = String::from_utf8_lossy(buf.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(buf.get(close + 1..)?).ok()?;
    let mut it = rest.split_ascii_whitespace();
    // Field 3 is the first token after ')'.
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?; // 4
    let pgid = it.next()?.parse().ok()?; // 5
    let sid = it.next()?.parse().ok()?; // 6
    let mut it = it.skip(2); // fields 7, 8
    let flags = it.next()?.parse().ok()?; // 9
    let mut it = it.skip(10); // fields 10..=19
    let threads = it.next()?.parse().ok()?; // 20
    let start_ticks = it.nth(1)?.parse().ok()?; // 22 (21 is itrealvalue)
    let rss_pages: i64 = it.nth(1)?.parse().ok()?; // 24 (23 is vsize)
    Some(Stat {
        pid,
        comm,
        state,
        ppid,
        pgid,
        sid,
        flags,
        threads,
        start_ticks,
        rss_pages: rss_pages.max(0) as u64,
    })
}

/// `/proc/PID/cmdline` as arguments. Normally NUL-separated; a process that rewrote its title
/// (Chromium's zygote-forked children do, setproctitle-style) shows one space-separated string,
/// which is split on spaces so its flags can still be read.
pub fn parse_cmdline(buf: &[u8]) -> Vec<String> {
    let end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let buf = &buf[..end];
    if buf.is_empty() {
        return Vec::new();
    }
    let mut args: Vec<String> = buf
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.len() == 1 && args[0].contains(" --") {
        args = args[0].split(' ').map(str::to_string).collect();
    }
    args
}

/// Whether a NUL-separated `cmdline` contains `needle` anywhere (arguments included).
pub fn cmdline_contains(cmdline: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// The fields of `/proc/PID/status` the programs use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Real, effective, saved and filesystem uid.
    pub uid: Option<[u32; 4]>,
    /// The pid in every PID namespace the process is in, outermost first (the last one is the
    /// pid in its own namespace).
    pub ns_pid: Vec<i32>,
}

pub fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            let v: Vec<u32> = rest
                .split_ascii_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [a, b, c, d] = v[..] {
                s.uid = Some([a, b, c, d]);
            }
        } else if let Some(rest) = line.strip_prefix("NSpid:") {
            s.ns_pid = rest
                .split_ascii_whitespace()
                .map_while(|x| x.parse().ok())
                .collect();
        }
    }
    s
}

/// `RLIMIT_NOFILE` from `/proc/PID/limits` (`None` where unlimited or unreadable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NofileLimits {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

pub fn parse_limits(text: &str) -> NofileLimits {
    let Some(line) = text.lines().find(|l| l.starts_with("Max open files")) else {
        return NofileLimits::default();
    };
    let mut it = line
        .get("Max open files".len()..)
        .unwrap_or("")
        .split_ascii_whitespace();
    NofileLimits {
        soft: it.next().and_then(|v| v.parse().ok()),
        hard: it.next().and_then(|v| v.parse().ok()),
    }
}

/// The unified-hierarchy cgroup path of a process (`0::/path`).
pub fn parse_cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The pod UID from a cgroup path (`…kubepods…pod<UID>…`), with `_` turned back into `-` (the
/// systemd cgroup driver writes `pod1234_abcd_…`).
pub fn pod_uid_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        if !path.contains("kubepods") {
            continue;
        }
        for seg in path.split('/') {
            let seg = seg.strip_suffix(".slice").unwrap_or(seg);
            if let Some(idx) = seg.rfind("pod") {
                let uid = seg.get(idx + 3..).unwrap_or("").replace('_', "-");
                if uid.len() >= 32
                    && uid.len() <= 64
                    && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                {
                    return Some(uid);
                }
            }
        }
    }
    None
}

/// Socket inode of an fd link target `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `/proc/meminfo` facts, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match k {
            "MemTotal:" => m.total = v.saturating_mul(1024),
            "MemAvailable:" => m.available = v.saturating_mul(1024),
            _ => {}
        }
    }
    m
}

/// Seconds since boot, the first field of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    let v: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stat_line(comm: &str) -> Vec<u8> {
        format!(
            "4242 ({comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 7 0 123456 \
             1000000 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
        )
        .into_bytes()
    }

    #[test]
    fn stat_plain() {
        let s = parse_stat(&stat_line("chromium")).expect("parses");
        assert_eq!((s.pid, s.comm.as_str()), (4242, "chromium"));
        assert_eq!((s.state, s.ppid, s.pgid, s.sid), ('S', 1, 4242, 4242));
        assert_eq!((s.threads, s.start_ticks, s.rss_pages), (7, 123456, 2560));
        assert_eq!(s.flags & PF_KTHREAD, 0);
    }

    #[test]
    fn stat_comm_with_parentheses_spaces_and_newlines() {
        let s = parse_stat(&stat_line("a) (b")).expect("parses");
        assert_eq!(
            (s.comm.as_str(), s.ppid, s.start_ticks),
            ("a) (b", 1, 123456)
        );
        let s = parse_stat(&stat_line("x\ny) S 9 9 9")).expect("parses");
        assert_eq!(
            (s.comm.as_str(), s.ppid, s.threads),
            ("x\ny) S 9 9 9", 1, 7)
        );
        let s = parse_stat(&stat_line("")).expect("an empty comm parses");
        assert_eq!(s.comm, "");
    }

    #[test]
    fn stat_malformed_is_none_not_panic() {
        for bad in [
            &b""[..],
            b"12",
            b"12 (x",
            b"12 x) S",
            b") (",
            b"x (a) S 1 2 3 0 -1 0 0 0 0 0 0 0 0 0 0 0 1 0 1 1 1",
            b"1 (a) S 1 2",
            b"1 (a) S x 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 1 0 1 1 1",
        ] {
            assert!(
                parse_stat(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn zombie_stat_parses() {
        let z = b"7 (chromium) Z 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0 0";
        let s = parse_stat(z).expect("parses");
        assert!(s.is_zombie());
        assert_eq!((s.pgid, s.start_ticks, s.rss_pages), (0, 555, 0));
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(parse_cmdline(b"a\0--b=c d\0"), ["a", "--b=c d"]);
        assert_eq!(parse_cmdline(b"rewritten title"), ["rewritten title"]);
        assert_eq!(
            parse_cmdline(b"/usr/lib/chromium/chromium --type=renderer --user-data-dir=/tmp/p\0\0"),
            [
                "/usr/lib/chromium/chromium",
                "--type=renderer",
                "--user-data-dir=/tmp/p"
            ]
        );
        assert!(parse_cmdline(b"").is_empty());
        assert!(parse_cmdline(b"\0\0").is_empty());
        assert!(cmdline_contains(b"a\0--user-data-dir=/x/b1/p\0", b"/x/b1/"));
        assert!(!cmdline_contains(b"a", b""));
    }

    #[test]
    fn status_uid_and_nspid() {
        let t =
            "Name:\tchromium\nUid:\t1000\t1001\t1002\t1003\nGid:\t0 0 0 0\nNSpid:\t4242\t17\t1\n";
        let s = parse_status(t);
        assert_eq!(s.uid, Some([1000, 1001, 1002, 1003]));
        assert_eq!(s.ns_pid, [4242, 17, 1]);
        assert_eq!(parse_status("Uid: 1 2\n"), Status::default());
    }

    #[test]
    fn limits_nofile() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max cpu time              unlimited            unlimited            seconds   \n\
                 Max open files            1024                 524288               files     \n";
        assert_eq!(
            parse_limits(t),
            NofileLimits {
                soft: Some(1024),
                hard: Some(524288)
            }
        );
        assert_eq!(
            parse_limits("Max open files unlimited unlimited files").soft,
            None
        );
        assert_eq!(parse_limits(""), NofileLimits::default());
    }

    #[test]
    fn pod_uid_cgroupfs_and_systemd_drivers() {
        let a = "0::/kubepods/burstable/pod6b2f7e2c-3c5d-4a4e-9f0a-1b2c3d4e5f60/abc123\n";
        assert_eq!(
            pod_uid_from_cgroup(a).as_deref(),
            Some("6b2f7e2c-3c5d-4a4e-9f0a-1b2c3d4e5f60")
        );
        let b = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6b2f7e2c_3c5d_4a4e_9f0a_1b2c3d4e5f60.slice/cri-containerd-abc.scope\n";
        assert_eq!(
            pod_uid_from_cgroup(b).as_deref(),
            Some("6b2f7e2c-3c5d-4a4e-9f0a-1b2c3d4e5f60")
        );
        assert_eq!(
            pod_uid_from_cgroup("0::/user.slice/session-1.scope\n"),
            None
        );
        assert_eq!(
            parse_cgroup_v2_path("1:name=x:/a\n0::/b/c\n").as_deref(),
            Some("/b/c")
        );
    }

    #[test]
    fn meminfo_uptime_and_sockets() {
        let m =
            parse_meminfo("MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    8000 kB\n");
        assert_eq!((m.total, m.available), (16000 * 1024, 8000 * 1024));
        assert_eq!(socket_inode("socket:[8994]"), Some(8994));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(parse_uptime("12.5 40.0\n"), Some(12.5));
        assert_eq!(parse_uptime("NaN 1"), None);
        assert_eq!(parse_uptime("-1 1"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever bytes a stat file holds, parsing returns; whatever a comm holds (no NUL,
        /// ≤ 15 bytes as the kernel allows), it round-trips and the fields after it are right.
        #[test]
        fn stat_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_stat(&bytes);
        }

        #[test]
        fn stat_any_comm_round_trips(comm in "[^\u{0}]{0,15}", ppid in 0i32..i32::MAX, start in any::<u64>()) {
            let line = format!("99 ({comm}) R {ppid} 5 6 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 {start} 1 2");
            let s = parse_stat(line.as_bytes()).expect("a well-formed line parses");
            prop_assert_eq!(s.comm, comm);
            prop_assert_eq!((s.pid, s.ppid, s.pgid, s.sid, s.threads, s.start_ticks), (99, ppid, 5, 6, 3, start));
        }

        #[test]
        fn text_parsers_never_panic(text in "\\PC{0,300}") {
            let _ = parse_status(&text);
            let _ = parse_limits(&text);
            let _ = parse_cgroup_v2_path(&text);
            let _ = pod_uid_from_cgroup(&text);
            let _ = parse_meminfo(&text);
            let _ = parse_uptime(&text);
            let _ = socket_inode(&text);
        }

        #[test]
        fn cmdline_never_panics_and_keeps_nul_separated_args(args in proptest::collection::vec("[^\u{0} ]{1,20}", 1..8)) {
            let mut bytes = Vec::new();
            for a in &args {
                bytes.extend_from_slice(a.as_bytes());
                bytes.push(0);
            }
            prop_assert_eq!(parse_cmdline(&bytes), args);
        }

        #[test]
        fn cmdline_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_cmdline(&bytes);
        }

        /// A `/proc/PID/limits` as the kernel writes it (fixed-width columns, `unlimited`,
        /// every other limit around the one we read, in any order) gives back its NOFILE pair.
        #[test]
        fn limits_round_trip(
            soft in proptest::option::of(any::<u64>()),
            hard in proptest::option::of(any::<u64>()),
            others in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("Max cpu time"), Just("Max file size"), Just("Max processes"),
                        Just("Max locked memory"), Just("Max address space"),
                        Just("Max msgqueue size"), Just("Max realtime timeout"),
                    ],
                    proptest::option::of(any::<u64>()),
                ),
                0..10,
            ),
            at in any::<usize>(),
        ) {
            let v = |x: Option<u64>| x.map_or("unlimited".to_string(), |n| n.to_string());
            let mut lines: Vec<String> = others
                .iter()
                .map(|(name, x)| format!("{name:<26}{:<21}{:<21}units     ", v(*x), v(*x)))
                .collect();
            let nofile = format!("{:<26}{:<21}{:<21}files     ", "Max open files", v(soft), v(hard));
            lines.insert(at % (lines.len() + 1), nofile);
            let text = format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n{}\n",
                lines.join("\n")
            );
            prop_assert_eq!(parse_limits(&text), NofileLimits { soft, hard });
        }

        /// A `/proc/PID/status` with any uids and any NSpid chain, among other fields (tabs or
        /// spaces between values, as kernels have written both), gives them back.
        #[test]
        fn status_round_trip(
            uid in any::<[u32; 4]>(),
            ns_pid in proptest::collection::vec(1i32..=i32::MAX, 1..5),
            name in "[^\n\u{0}]{0,15}",
            sep in prop_oneof![Just("\t"), Just(" ")],
            uid_first in any::<bool>(),
        ) {
            let join = |v: Vec<String>| v.join(sep);
            let uid_line = format!("Uid:\t{}", join(uid.iter().map(u32::to_string).collect()));
            let nspid_line = format!("NSpid:\t{}", join(ns_pid.iter().map(i32::to_string).collect()));
            let (a, b) = if uid_first { (uid_line, nspid_line) } else { (nspid_line, uid_line) };
            let text = format!(
                "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\n{a}\nGid:\t0\t0\t0\t0\nNSpgid:\t1\n{b}\nThreads:\t1\n"
            );
            let s = parse_status(&text);
            prop_assert_eq!(s.uid, Some(uid));
            prop_assert_eq!(s.ns_pid, ns_pid);
        }
    }
}
