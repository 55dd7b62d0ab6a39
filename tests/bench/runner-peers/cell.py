"""One bench cell: one tool, N sessions at concurrency C, inside a private PID namespace.

runner-vs-peers.sh starts this as PID 1 of a fresh namespace
(`unshare --pid --fork --mount-proc --kill-child`), already inside a cpuacct cgroup of its own.
So every process seen in /proc belongs to the cell, orphans are reparented to this process (which
reaps them before counting), and killing what is left at the end can reach nothing outside.

It serves the bench site on 127.0.0.1 (python3 -m http.server), runs the tool with TMPDIR set to
the cell's own temporary directory, samples the PSS of every Chromium process every ~200 ms, and
writes result.json:
  mode clean: wall time, sessions ok/failed, per-session latencies, machine CPU (/proc/stat) and
              cell CPU (cgroup cpuacct), peak PSS, processes and directories left at the tool's
              exit and 3 s later.
  mode kill:  SIGKILL the driving process once 3 sessions have written their PNG (so the next ones
              are in flight), then count what is left 3 s later; for leakwarden-runner also after
              its next start in the same directory (which removes dead runs' directories).

usage: cell.py --tool T --sessions N --concurrency C --mode clean|kill --cell-dir D --tmp T
               --site DIR --port P --peers DIR --runner BIN --job YAML --chromium PATH
               [--cpuacct FILE]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))


def machine_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def cpuacct_ns(path):
    if not path:
        return None
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if path.endswith("cpu.stat"):  # cgroup v2: usage_usec
        for line in text.splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) * 1000
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def pids():
    for d in os.listdir("/proc"):
        if d.isdigit():
            yield int(d)


def stat_of(pid):
    """(comm, state) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1 : s.rindex(")")]
    state = s[s.rindex(")") + 2]
    return comm, state


def is_browser(pid):
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return "/chromium/" in exe or exe.endswith("/chromium") or "chrome" in os.path.basename(exe)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    def __init__(self, every=0.2):
        super().__init__(daemon=True)
        self.every = every
        self.stop = threading.Event()
        self.peak_pss_kib = 0
        self.peak_browser_procs = 0
        self.samples = 0

    def run(self):
        me = os.getpid()
        while not self.stop.is_set():
            total = 0
            n = 0
            for p in pids():
                if p != me and is_browser(p):
                    total += pss_kib(p)
                    n += 1
            self.peak_pss_kib = max(self.peak_pss_kib, total)
            self.peak_browser_procs = max(self.peak_browser_procs, n)
            self.samples += 1
            self.stop.wait(self.every)


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def left_processes(exclude):
    """Live (non-zombie) processes of the namespace other than this one and `exclude`."""
    reap()
    me = os.getpid()
    out = []
    for p in pids():
        if p == me or p in exclude:
            continue
        st = stat_of(p)
        if st is None or st[1] == "Z":
            continue
        out.append({"pid": p, "comm": st[0], "browser": is_browser(p)})
    return out


def left_dirs(tmp):
    try:
        return sorted(os.listdir(tmp))
    except OSError:
        return []


def leftovers(tmp, exclude):
    procs = left_processes(exclude)
    dirs = left_dirs(tmp)
    return {
        "processes": len(procs),
        "browser_processes": sum(1 for p in procs if p["browser"]),
        "process_comms": sorted({p["comm"] for p in procs}),
        "dirs": len(dirs),
        "dir_names": dirs[:10],
    }


def port_served(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def refuse_served_port(port):
    """A cell serves its site itself, inside its cgroup. If something already listens on the
    port (a server left by a manual run, another bench), the cell's own server would fail to bind
    and the tool would be served by that other process — outside the cell, its CPU not counted."""
    if port_served(port):
        raise SystemExit(
            f"127.0.0.1:{port} is already served by another process; a cell serves its own site "
            "(stop that process or choose another port: BENCH_PORT)"
        )


def refuse_unless_namespace_init():
    """A cell ends by SIGKILLing every process it can see: safe only as PID 1 of a PID namespace
    of its own. Anywhere else (run by hand, by a script that forgot `unshare`) it would kill the
    host's processes: refuse before anything else."""
    if os.getpid() != 1:
        raise SystemExit(
            f"{os.path.basename(sys.argv[0])} must run as PID 1 of its own PID namespace "
            "(unshare --pid --fork --mount-proc --kill-child ...): it ends by killing every "
            f"process it can see, and here it is PID {os.getpid()}"
        )


def wait_port(port, server, deadline=10.0):
    """Until the cell's own server listens on the port; it must still be running then."""
    t = time.monotonic() + deadline
    while time.monotonic() < t:
        if server.poll() is not None:
            raise SystemExit(f"static server exited ({server.returncode}) before it listened on 127.0.0.1:{port}")
        if port_served(port):
            if server.poll() is not None:
                raise SystemExit(f"static server exited ({server.returncode}); 127.0.0.1:{port} is another's")
            return
        time.sleep(0.05)
    raise SystemExit(f"static server did not listen on 127.0.0.1:{port}")


def tool_command(a, base, out, job, summary):
    n, c = str(a.sessions), str(a.concurrency)
    if a.tool == "runner":
        return [
            a.runner, "run", job, "--sessions", n, "--concurrency", c,
            "--summary-json", summary, "--chromium", a.chromium,
            "--run-dir", a.tmp, "--artifacts", out,
        ]
    if a.tool == "playwright":
        return [os.path.join(a.peers, "venv/bin/python"), os.path.join(HERE, "playwright_peer.py"),
                n, c, base, out, a.chromium]
    if a.tool == "cluster":
        return ["node", os.path.join(HERE, "cluster.js"), n, c, base, out, a.chromium]
    if a.tool == "naive":
        return ["node", os.path.join(HERE, "naive.js"), n, c, base, out, a.chromium]
    raise SystemExit(f"unknown tool {a.tool}")


def sessions_of(a, stdout_path, summary):
    """[(ok, ms)] per finished session, from the tool's own output."""
    res = []
    if a.tool == "runner":
        try:
            with open(summary) as f:
                s = json.load(f)
        except (OSError, ValueError):
            return res, None
        for r in s.get("records", []):
            res.append((r["outcome"] in ("ok", "retried"), r["duration_ms"]))
        return res, s
    with open(stdout_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                res.append((bool(r.get("ok")), int(r.get("ms", 0))))
    return res, None


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(1, -(-len(sorted_vals) * p // 100))  # nearest rank
    return sorted_vals[int(k) - 1]


def main():
    refuse_unless_namespace_init()
    ap = argparse.ArgumentParser()
    for k in ("tool", "mode", "cell-dir", "site", "peers", "runner", "job", "chromium"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cpuacct", default="")
    ap.add_argument("--tmp", required=True, help="the cell's TMPDIR (short: /tmp/lwbXXXXXX)")
    a = ap.parse_args()
    for k in ("cell_dir", "site", "peers", "runner", "job", "tmp"):
        setattr(a, k, os.path.abspath(getattr(a, k)))

    # TMPDIR of the tool (and the runner's --run-dir): short, because Chromium puts unix sockets
    # under it and the runner refuses a directory whose socket paths could be too long.
    tmp = a.tmp
    out = os.path.join(a.cell_dir, "out")
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    base = f"http://127.0.0.1:{a.port}"
    job = os.path.join(a.cell_dir, "job.yaml")
    with open(a.job) as f:
        text = f.read()
    with open(job, "w") as f:
        f.write(text.replace("127.0.0.1:18631", f"127.0.0.1:{a.port}"))
    summary = os.path.join(a.cell_dir, "summary.json")
    stdout_path = os.path.join(a.cell_dir, "tool.stdout")
    stderr_path = os.path.join(a.cell_dir, "tool.stderr")

    refuse_served_port(a.port)
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(a.port), "--bind", "127.0.0.1", "--directory", a.site],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(a.port, server)

    env = dict(os.environ)
    env["TMPDIR"] = tmp
    env["NODE_PATH"] = os.path.join(a.peers, "node_modules")
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    env["PUPPETEER_SKIP_DOWNLOAD"] = "1"
    env.setdefault("RUST_LOG", "warn")
    cmd = tool_command(a, base, out, job, summary)

    sampler = Sampler()
    sampler.start()
    busy0, cg0, t0 = machine_busy_ticks(), cpuacct_ns(a.cpuacct), time.monotonic()
    with open(stdout_path, "w") as so, open(stderr_path, "w") as se:
        tool = subprocess.Popen(cmd, stdout=so, stderr=se, env=env, cwd=a.cell_dir)
    result = {"tool": a.tool, "mode": a.mode, "sessions_planned": a.sessions,
              "concurrency": a.concurrency, "command": cmd}

    if a.mode == "clean":
        rc = tool.wait()
        t1, busy1, cg1 = time.monotonic(), machine_busy_ticks(), cpuacct_ns(a.cpuacct)
        sampler.stop.set()
        sampler.join()
        at_exit = leftovers(tmp, {server.pid})
        time.sleep(3)
        after3 = leftovers(tmp, {server.pid})
        recs, summ = sessions_of(a, stdout_path, summary)
        ok = [ms for good, ms in recs if good]
        ok.sort()
        n_ok = len(ok)
        wall = t1 - t0
        machine_cpu = (busy1 - busy0) / CLK_TCK
        cell_cpu = (cg1 - cg0) / 1e9 if cg0 is not None and cg1 is not None else None
        result.update(
            rc=rc, wall_s=round(wall, 3), ok=n_ok, failed=a.sessions - n_ok,
            sessions_per_min=round(n_ok * 60 / wall, 2) if wall > 0 else 0,
            latency_p50_ms=pct(ok, 50), latency_p95_ms=pct(ok, 95),
            machine_cpu_s=round(machine_cpu, 2),
            machine_cpu_s_per_session=round(machine_cpu / n_ok, 3) if n_ok else None,
            cell_cpu_s=round(cell_cpu, 2) if cell_cpu is not None else None,
            cell_cpu_s_per_session=round(cell_cpu / n_ok, 3) if n_ok and cell_cpu is not None else None,
            peak_pss_mib=round(sampler.peak_pss_kib / 1024, 1),
            peak_browser_processes=sampler.peak_browser_procs, pss_samples=sampler.samples,
            left_at_exit=at_exit, left_after_3s=after3,
        )
        if summ is not None:
            result["runner_summary"] = {k: summ.get(k) for k in
                                        ("sessions", "wall_seconds", "sessions_per_minute", "durations",
                                         "browsers_launched", "launch_failures", "cleanup",
                                         "runner_cpu_seconds")}
    else:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and tool.poll() is None:
            if len([f for f in os.listdir(out) if f.endswith(".png")]) >= 3:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        result["finished_before_kill"] = tool.poll() is not None
        result["pngs_before_kill"] = len(os.listdir(out))
        os.kill(tool.pid, signal.SIGKILL)
        tool.wait()
        result["browser_processes_at_kill"] = sum(1 for p in left_processes({server.pid}) if p["browser"])
        time.sleep(3)
        sampler.stop.set()
        sampler.join()
        result["left_3s_after_kill"] = leftovers(tmp, {server.pid})
        if a.tool == "runner":
            # The runner's next start in the same directory removes the dead run's directories.
            nxt = [a.runner, "run", job, "--sessions", "1", "--concurrency", "1",
                   "--chromium", a.chromium, "--run-dir", tmp, "--artifacts", out]
            with open(os.path.join(a.cell_dir, "next.stderr"), "w") as se:
                result["next_start_rc"] = subprocess.run(nxt, stdout=se, stderr=se, env=env).returncode
            result["left_after_next_start"] = leftovers(tmp, {server.pid})

    # Clean up the cell: everything in this namespace but us is the cell's, so kill it all.
    for p in pids():
        if p != os.getpid():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.2)
    reap()
    with open(os.path.join(a.cell_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "command"}))


if __name__ == "__main__":
    main()
