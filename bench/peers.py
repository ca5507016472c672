#!/usr/bin/env python3
"""Peer-proxy benchmark (issue #5): modgate against mitmproxy, squid (with and without ssl_bump),
tinyproxy, nginx and no proxy at all, every scenario against each in the same run, on loopback,
with the same load client (bench/loadgen).

One upstream (`loadgen serve`, TLS, certificate for localhost and 127.0.0.1) and one nginx serve
the same directory. Host names decide what each proxy does:
  - https://localhost:<up>/...  is intercepted: modgate lists `localhost` in intercept.hosts, and
    since localhost is not a module proxy host its requests take the pass-through forward route
    (no cache); squid-bump and mitmdump intercept everything;
  - https://127.0.0.1:<up>/...  is tunnelled blind by modgate, squid (no bump) and tinyproxy;
  - https://proxy.golang.org/... is modgate's module cache (upstream.overrides → the upstream).

Scenarios (each figure is the median of --repeat runs, interleaved across targets):
  a  intercepted 1 KB GETs, keep-alive, concurrency 1, 16, 64            req/s, p50/p99
  b  intercepted GET of a 100 MB zip, one and eight at a time             MB/s
  c  new connection + TLS handshake per 1 KB GET (leaf certificates warm) handshakes/s
  d  blind CONNECT tunnel: 100 MB zip throughput; new tunnel + TLS + GET per request; CONNECT alone
  e  modgate cache hits (.mod/.info h1 and h2, 100 MB zip) against nginx serving the same files
  f  memory: 1,000 idle tunnels, 1,000 idle intercepted connections, 20 concurrent 100 MB
     downloads through interception — each proxy started fresh for each of these
  g  the go command building a program with 60 module dependencies: through modgate (cold and
     warm cache), GOPROXY=file:// of the same tree, and the upstream directly (--g-repeat rounds)

Usage:
  python3 bench/peers.py                 # full run, about 20 minutes on 2 cores
  python3 bench/peers.py --smoke         # every scenario, short, under five minutes
  python3 bench/peers.py --only a,c,g    # some scenarios
  python3 bench/peers.py --only b --targets modgate   # one proxy against the limits, for A/B work
Options: --seconds 5 --repeat 3 --g-repeat 7 --zip-mb 100 --idle 1000 --downloads 20 --modules 60 --json FILE
Prints Markdown tables (results, then targets met/missed) and writes all runs as JSON.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import common
import gomodtree
import peerprocs as pp
from common import LOADGEN, Procs, build, cleanup, drain, start_modgate, tmpdir

GO = "/usr/lib/go-1.19/bin/go"

INTERCEPTING = ["modgate", "squid-bump", "mitmdump"]
TUNNELLING = ["modgate", "squid", "tinyproxy"]
LIMITS = ["direct", "nginx"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_busy(interval=0.5):
    """Fraction of all CPU time used (by anything) over `interval` seconds, from /proc/stat."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def loadgen_run(args):
    out = subprocess.run([LOADGEN, "run"] + args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(args)} failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["stderr"] = out.stderr.strip()[-300:]
    return r


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = tmpdir("modgate-peers-", a.work_dir)
        os.chmod(self.work, 0o755)
        self.procs = Procs()
        self.rows = []  # one per (scenario, target): dict with medians and all runs
        self.notes = []
        if a.work_dir:
            self.notes.append(f"work directory (proxies' data, upstream files) under {a.work_dir}")
        self.waited = [0, 0.0, 0]  # rounds that waited, seconds waited, rounds started busy anyway

    def wait_quiet(self):
        """Before a round: waits (up to --quiet-wait seconds) until the machine is idle, since
        another process's compile on the same cores would skew one target against another."""
        if self.a.quiet_wait <= 0:
            return
        t0 = time.time()
        while cpu_busy() > 0.2:
            if time.time() - t0 > self.a.quiet_wait:
                self.waited[2] += 1
                log(f"  machine still busy after {self.a.quiet_wait}s; measuring anyway")
                return
            time.sleep(2)
        if time.time() - t0 > 1:
            self.waited[0] += 1
            self.waited[1] += time.time() - t0

    def wanted(self, target):
        """--targets: measure only these (the limits direct and nginx always run)."""
        return not self.a.targets or target in LIMITS or target in self.a.targets.split(",")

    # === fixtures ===

    def setup(self):
        a, w = self.a, self.work
        self.tree = os.path.join(w, "tree")
        os.makedirs(self.tree)
        with open(os.path.join(self.tree, "small.bin"), "wb") as f:
            f.write(os.urandom(1024))
        self.zip_rel = "example.com/peers/big/@v/v1.0.0.zip"
        zdir = os.path.dirname(os.path.join(self.tree, self.zip_rel))
        os.makedirs(zdir)
        subprocess.run([LOADGEN, "mkzip", "--module", "example.com/peers/big", "--version", "v1.0.0", "--size", str(a.zip_mb << 20), "--out", os.path.join(self.tree, self.zip_rel)], check=True)
        with open(os.path.join(zdir, "v1.0.0.mod"), "w") as f:
            f.write("module example.com/peers/big\n")
        with open(os.path.join(zdir, "v1.0.0.info"), "w") as f:
            json.dump({"Version": "v1.0.0", "Time": gomodtree.TIME}, f)
        gomodtree.make_tree(self.tree, a.modules)
        self.certs = os.path.join(w, "up-certs")
        subprocess.run([LOADGEN, "certs", "--dir", self.certs], check=True)
        self.up_ca = f"{self.certs}/ca.pem"
        up = self.procs.start([LOADGEN, "serve", "--dir", self.tree, "--cert", f"{self.certs}/cert.pem", "--key", f"{self.certs}/key.pem"])
        self.up_port = int(up.stdout.readline().strip().rsplit(":", 1)[1])
        self.up_pid = up.pid
        self.nginx = pp.start_nginx(self.procs, w, self.tree, self.certs)
        self.peers = {}
        self.peers["modgate"] = self.start_modgate(self.procs, w, "modgate")
        if self.wanted("mitmdump"):
            self.peers["mitmdump"] = pp.start_mitmdump(self.procs, w, self.up_ca)
        if self.wanted("squid-bump"):
            self.peers["squid-bump"] = pp.start_squid(self.procs, w, self.up_ca, bump=True)
        if self.wanted("squid"):
            self.peers["squid"] = pp.start_squid(self.procs, w, self.up_ca, bump=False)
        if self.wanted("tinyproxy"):
            self.peers["tinyproxy"] = pp.start_tinyproxy(self.procs, w)

    def start_modgate(self, procs, work, name):
        p, proxy, admin, ca = start_modgate(procs, work, name, common.loopback_upstream(self.up_ca, self.up_port))
        drain(p)
        return pp.Peer("modgate", p, proxy, ca)

    def start_fresh(self, name, work):
        """A new instance of one proxy in its own Procs (stopped after the measurement)."""
        procs = Procs()
        os.makedirs(work, exist_ok=True)
        os.chmod(work, 0o755)
        if name == "modgate":
            peer = self.start_modgate(procs, work, "modgate")
        elif name == "mitmdump":
            peer = pp.start_mitmdump(procs, work, self.up_ca)
        elif name == "squid-bump":
            peer = pp.start_squid(procs, work, self.up_ca, bump=True)
        elif name == "squid":
            peer = pp.start_squid(procs, work, self.up_ca, bump=False)
        elif name == "tinyproxy":
            peer = pp.start_tinyproxy(procs, work)
        else:
            raise ValueError(name)
        return procs, peer

    # === how each target is reached ===

    def client_args(self, target, mode, peer=None):
        """loadgen arguments (base URL, proxy, CA) for `target` in `mode` (intercept, tunnel, cache)."""
        if target == "direct":
            host = "127.0.0.1" if mode == "tunnel" else "localhost"
            return f"https://{host}:{self.up_port}", ["--ca", self.up_ca], self.up_pid
        if target == "nginx":
            return f"https://{self.nginx.addr}", ["--ca", self.up_ca], self.nginx.pid
        peer = peer or self.peers[target]
        if mode == "tunnel":
            return f"https://127.0.0.1:{self.up_port}", ["--proxy", peer.addr, "--ca", self.up_ca], peer.pid
        if mode == "cache":
            return "https://proxy.golang.org", ["--proxy", peer.addr, "--ca", peer.ca], peer.pid
        return f"https://localhost:{self.up_port}", ["--proxy", peer.addr, "--ca", peer.ca], peer.pid

    # === throughput scenarios ===

    def measure(self, sid, title, unit, key, targets, mode, paths, extra, seconds):
        """Runs `repeat` rounds; each round runs every target once, in order."""
        targets = [t for t in targets if self.wanted(t)]
        runs = {t: [] for t in targets}
        peaks = {t: 0.0 for t in targets}
        for r in range(self.a.repeat):
            self.wait_quiet()
            for t in targets:
                cache_mode = mode if not (mode == "cache" and t in LIMITS) else "intercept"
                base, conn, pid = self.client_args(t, cache_mode)
                urls = sum((["--url", base + p] for p in paths), [])
                user0, sys0 = pp.tree_cpu_split(pid)
                with pp.RssSampler(pid) as s:
                    res = loadgen_run(urls + conn + extra + ["--duration", f"{seconds}s", "--label", f"{sid}/{t}"])
                # CPU of the serving process (the proxy; for direct, the upstream) per unit:
                # ms per 1,000 requests, or s per GB.
                # The system (kernel) share alone too: the part no user-space change removes.
                user1, sys1 = pp.tree_cpu_split(pid)
                cpu, kernel = user1 - user0 + sys1 - sys0, sys1 - sys0
                if unit == "MB/s":
                    per = 1e9 / max(res.get("bytes", 0), 1)
                    res["cpu_per_unit"], res["sys_per_unit"] = round(cpu * per, 3), round(kernel * per, 3)
                else:
                    per = 1e6 / max(res["requests"], 1)
                    res["cpu_per_unit"], res["sys_per_unit"] = round(cpu * per, 1), round(kernel * per, 1)
                peaks[t] = max(peaks[t], s.peak)
                runs[t].append(res)
        for t in targets:
            rs = runs[t]
            vals = [x[key] for x in rs]
            row = {
                "id": sid, "scenario": title, "unit": unit, "target": t,
                "value": statistics.median(vals),
                "p50_ms": statistics.median(x["p50_ms"] for x in rs),
                "p99_ms": statistics.median(x["p99_ms"] for x in rs),
                "errors": sum(x["errors"] for x in rs),
                "requests": sum(x["requests"] for x in rs),
                "rss_mib": round(peaks[t], 1),
                "cpu_per_unit": statistics.median(x["cpu_per_unit"] for x in rs),
                "sys_per_unit": statistics.median(x["sys_per_unit"] for x in rs),
                "cpu_unit": "s/GB" if unit == "MB/s" else "ms/1k req",
                "runs": vals,
            }
            if row["errors"]:
                row["stderr"] = rs[-1]["stderr"]
            self.rows.append(row)
        self.print_rows(sid)

    def print_rows(self, sid):
        for row in self.rows:
            if row["id"] == sid:
                cpu = f" cpu go {row['go_cpu_s']} server {row.get('server_cpu_s', '-')}" if "go_cpu_s" in row else ""
                if "cpu_per_unit" in row:
                    cpu += f" cpu {row['cpu_per_unit']} {row['cpu_unit']} (sys {row.get('sys_per_unit', '-')})"
                log(f"  {row['scenario']:<58} {row['target']:<11} {row['value']:>10} {row['unit']:<7} p50 {row['p50_ms']} p99 {row['p99_ms']} rss {row['rss_mib']} err {row['errors']}{cpu}")

    def scenario_a(self):
        for c in (1, 16, 64):
            self.measure(f"a-c{c}", f"a. intercepted 1 KB GET, keep-alive, c={c}", "req/s", "rps",
                         INTERCEPTING + LIMITS, "intercept", ["/small.bin"], ["--concurrency", str(c)], self.a.seconds)

    def scenario_b(self):
        for c in (1, 8):
            self.measure(f"b-c{c}", f"b. intercepted {self.a.zip_mb} MB zip GET, c={c}", "MB/s", "mb_per_s",
                         INTERCEPTING + LIMITS, "intercept", ["/" + self.zip_rel], ["--concurrency", str(c)], self.a.seconds)

    def scenario_c(self):
        self.measure("c", "c. new connection + TLS handshake per 1 KB GET, c=8", "conn/s", "rps",
                     INTERCEPTING + LIMITS, "intercept", ["/small.bin"], ["--concurrency", "8", "--new-conn"], self.a.seconds)

    def scenario_d(self):
        for c in (1, 8, 64):
            self.measure(f"d-tput-c{c}", f"d. blind tunnel, {self.a.zip_mb} MB zip GET, c={c}", "MB/s", "mb_per_s",
                         TUNNELLING + ["direct"], "tunnel", ["/" + self.zip_rel], ["--concurrency", str(c)], self.a.seconds)
        self.measure("d-conn", "d. new tunnel + TLS + 1 KB GET per request, c=8", "conn/s", "rps",
                     TUNNELLING + ["direct"], "tunnel", ["/small.bin"], ["--concurrency", "8", "--new-conn"], self.a.seconds)
        self.measure("d-connect", "d. CONNECT only (answered 200, closed), c=8", "conn/s", "rps",
                     TUNNELLING, "tunnel", ["/small.bin"], ["--concurrency", "8", "--connect-only"], self.a.seconds)

    def scenario_e(self):
        mg = self.peers["modgate"]
        small = ["/example.com/peers/m00/@v/v1.0.0.mod", "/example.com/peers/m00/@v/v1.0.0.info"]
        for p in small + ["/" + self.zip_rel]:
            subprocess.run(["curl", "-sS", "-o", "/dev/null", "--fail", "--proxy", f"http://{mg.addr}", "--cacert", mg.ca, f"https://proxy.golang.org{p}"], check=True)
        for c in (16, 64):
            for h2 in (False, True):
                proto = "h2" if h2 else "HTTP/1.1"
                self.measure(f"e-small-{'h2' if h2 else 'h1'}-c{c}", f"e. cache hit .mod/.info, c={c}, {proto}", "req/s", "rps",
                             ["modgate", "nginx", "direct"], "cache", small, ["--concurrency", str(c)] + (["--h2"] if h2 else []), self.a.seconds)
        self.measure("e-zip", f"e. cache hit {self.a.zip_mb} MB zip, c=1", "MB/s", "mb_per_s",
                     ["modgate", "nginx", "direct"], "cache", ["/" + self.zip_rel], ["--concurrency", "1"], self.a.seconds)

    # === memory ===

    def scenario_f(self):
        a = self.a
        for mode, names, sid, title in (
            ("tunnel", TUNNELLING, "f-idle-tunnel", f"f. {a.idle} idle tunnels open"),
            ("intercept", INTERCEPTING, "f-idle-mitm", f"f. {a.idle} idle intercepted connections open"),
        ):
            for name in filter(self.wanted, names):
                vals = []
                for r in range(a.repeat):
                    self.wait_quiet()
                    procs, peer = self.start_fresh(name, os.path.join(self.work, f"{sid}-{name}-{r}"))
                    try:
                        base, conn, pid = self.client_args(name, mode, peer)
                        before = pp.tree_rss_mib(pid)
                        idle = subprocess.Popen([LOADGEN, "idle", "--url", base + "/small.bin", *conn, "--count", str(a.idle), "--hold", "600s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                        res = json.loads(idle.stdout.readline())
                        time.sleep(1.0)
                        held = pp.tree_rss_mib(pid)
                        hwm = pp.status_kib(pid, "VmHWM") / 1024.0
                        idle.kill()
                        idle.wait()
                        vals.append((held, before, hwm, res))
                    finally:
                        procs.stop()
                held = statistics.median(v[0] for v in vals)
                self.rows.append({
                    "id": sid, "scenario": title, "unit": "MiB RSS", "target": name,
                    "value": round(held, 1), "rss_mib": round(held, 1),
                    "baseline_mib": round(statistics.median(v[1] for v in vals), 1),
                    "hwm_mib": round(max(v[2] for v in vals), 1),
                    "open": min(v[3]["open"] for v in vals), "errors": sum(v[3]["errors"] for v in vals),
                    "p50_ms": "", "p99_ms": "", "runs": [round(v[0], 1) for v in vals],
                })
            self.print_rows(sid)
        sid, title = "f-downloads", f"f. {a.downloads} concurrent {a.zip_mb} MB downloads, intercepted"
        for name in filter(self.wanted, INTERCEPTING + ["direct"]):
            vals = []
            for r in range(a.repeat):
                self.wait_quiet()
                if name == "direct":
                    procs, peer = None, None
                else:
                    procs, peer = self.start_fresh(name, os.path.join(self.work, f"{sid}-{name}-{r}"))
                try:
                    base, conn, pid = self.client_args(name, "intercept", peer)
                    with pp.RssSampler(pid) as s:
                        res = loadgen_run(["--url", base + "/" + self.zip_rel, *conn, "--concurrency", str(a.downloads), "--requests", str(a.downloads)])
                    hwm = pp.status_kib(pid, "VmHWM") / 1024.0 if name == "modgate" else 0.0
                    vals.append((s.peak, hwm, res))
                finally:
                    if procs:
                        procs.stop()
            self.rows.append({
                "id": sid, "scenario": title, "unit": "MiB peak RSS", "target": name,
                "value": round(statistics.median(v[0] for v in vals), 1),
                "rss_mib": round(max(v[0] for v in vals), 1),
                "hwm_mib": round(max(v[1] for v in vals), 1),
                "mb_per_s": statistics.median(v[2]["mb_per_s"] for v in vals),
                "p50_ms": statistics.median(v[2]["p50_ms"] for v in vals),
                "p99_ms": statistics.median(v[2]["p99_ms"] for v in vals),
                "errors": sum(v[2]["errors"] for v in vals),
                "runs": [round(v[0], 1) for v in vals],
            })
        self.print_rows(sid)

    # === the go command ===

    def go_env(self, gopath, **kw):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GO") and k.lower() not in ("https_proxy", "http_proxy", "no_proxy", "ssl_cert_file")}
        env.update({
            "HOME": self.work, "GOPATH": gopath, "GOMODCACHE": os.path.join(gopath, "pkg", "mod"),
            "GOCACHE": os.path.join(self.agent, "gocache"), "GOTMPDIR": self.agent_tmp, "GOFLAGS": "-mod=mod", "GOSUMDB": "off",
            "GONOSUMDB": "", "GOPRIVATE": "", "CGO_ENABLED": "0", "PATH": os.path.dirname(GO) + ":" + env.get("PATH", ""),
        })
        env.update(kw)
        return env

    def go_build(self, tag, env_kw):
        """One timed `go build` of a pristine copy of the app with an empty module cache: seconds,
        the go.sum it wrote, and the CPU seconds the go command and its children used."""
        d = os.path.join(self.agent, "go", tag)
        shutil.copytree(os.path.join(self.work, "app"), d)
        gopath = os.path.join(d, "gopath")
        env = self.go_env(gopath, **env_kw)
        t0 = time.time()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([GO, "build", "-o", os.path.join(d, "app.bin"), "."], cwd=d, env=env, capture_output=True, text=True)
        secs = time.time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        if out.returncode != 0:
            raise RuntimeError(f"go build ({tag}) failed:\n{out.stderr[-3000:]}")
        with open(os.path.join(d, "go.sum")) as f:
            sums = f.read()
        subprocess.run(["chmod", "-R", "u+w", gopath])
        shutil.rmtree(d, ignore_errors=True)
        return secs, sums, cpu

    def scenario_g(self):
        a = self.a
        # The go command's files (app copies, module cache, build cache) live on another file
        # system than modgate's data, as on a separate build agent: its module cache, deleted
        # after every build, would otherwise leave thousands of just-freed inodes in the file
        # system modgate creates its cache files in, and ext4 scans past those on every create.
        self.agent = tempfile.mkdtemp(prefix="modgate-agent-", dir=a.agent_dir) if a.agent_dir else self.work
        # Its temporary build directories too (GOTMPDIR; /tmp otherwise): each build creates and
        # removes a few hundred files there.
        self.agent_tmp = os.path.join(self.agent, "gotmp")
        os.makedirs(self.agent_tmp, exist_ok=True)
        if a.agent_dir:
            self.notes.append(f"scenario g: the go command's files under {a.agent_dir}, modgate's data under {self.work}")
        try:
            self.run_g()
        finally:
            if self.agent != self.work:
                subprocess.run(["chmod", "-R", "u+w", self.agent])
                cleanup(self.agent)

    def run_g(self):
        a = self.a
        gomodtree.make_app(os.path.join(self.work, "app"), a.modules)
        file_proxy = {"GOPROXY": "file://" + self.tree}
        # Fill the build cache once, so every timed build measures module fetching, extraction and
        # hashing, not compiling.
        self.go_build("warmup", file_proxy)
        tags = ("modgate cold", "modgate warm", "file://", "direct")
        results = {t: [] for t in tags}
        # CPU seconds per build: the go command's (with its children) and the serving process's
        # (modgate, or the upstream file server for direct; none for file://).
        go_cpu = {t: [] for t in tags}
        server_cpu = {t: [] for t in tags}
        sums = set()

        def build(tag, r, env, server_pid):
            before = common.cpu_seconds(server_pid) if server_pid else 0.0
            secs, s, cpu = self.go_build(f"{tag.replace(' ', '-').replace(':', '').replace('/', '')}-{r}", env)
            results[tag].append(secs)
            go_cpu[tag].append(cpu)
            if server_pid:
                server_cpu[tag].append(common.cpu_seconds(server_pid) - before)
            sums.add(s)

        for r in range(a.g_repeat):
            self.wait_quiet()
            procs, mg = self.start_fresh("modgate", os.path.join(self.work, f"g-modgate-{r}"))
            try:
                via = {"GOPROXY": "https://proxy.golang.org", "HTTPS_PROXY": f"http://{mg.addr}", "SSL_CERT_FILE": mg.ca}
                for tag in ("modgate cold", "modgate warm"):
                    build(tag, r, via, mg.pid)
            finally:
                procs.stop()
            build("file://", r, file_proxy, None)
            build("direct", r, {"GOPROXY": f"https://localhost:{self.up_port}", "SSL_CERT_FILE": self.up_ca}, self.up_pid)
        title = f"g. go build, {a.modules} modules ({gomodtree.zip_bytes(self.tree, a.modules) / 1e6:.1f} MB of zips), empty GOMODCACHE"
        for tag, vals in results.items():
            row = {"id": "g", "scenario": title, "unit": "s", "target": tag, "value": round(statistics.median(vals), 2),
                   "runs": [round(v, 2) for v in vals], "p50_ms": "", "p99_ms": "", "errors": 0, "rss_mib": "",
                   "go_cpu_s": round(statistics.median(go_cpu[tag]), 2)}
            if server_cpu[tag]:
                row["server_cpu_s"] = round(statistics.median(server_cpu[tag]), 3)
            self.rows.append(row)
        if len(sums) != 1:
            raise RuntimeError("go.sum differs between runs")
        self.print_rows("g")

    # === report ===

    def value(self, sid, target):
        for row in self.rows:
            if row["id"] == sid and row["target"] == target:
                return row
        return None

    def report(self, started, elapsed):
        out = []
        # Ratios are modgate's value over the target's: higher is better for req/s, conn/s and
        # MB/s, lower is better for MiB and seconds.
        out.append("| scenario | target | value | unit | p50 / p99 ms | CPU of the server per unit | peak RSS MiB | modgate ÷ target | errors | runs |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for row in self.rows:
            # For go builds the comparable modgate run is cold against direct, warm against file://.
            mine = {"direct": "modgate cold", "file://": "modgate warm"}.get(row["target"], "modgate") if row["id"] == "g" else "modgate"
            mg = self.value(row["id"], mine)
            ratio = ""
            if mg and not row["target"].startswith("modgate") and row["value"] and isinstance(row["value"], (int, float)):
                ratio = f"{mg['value'] / row['value']:.2f}x" + (f" ({mine.split()[1]})" if row["id"] == "g" else "")
            lat = f"{row['p50_ms']} / {row['p99_ms']}" if row.get("p50_ms") != "" else ""
            if row.get("requests") == 0 or row.get("p50_ms") == 0:
                lat = "none completed (median run)"
            extra = ""
            if "mb_per_s" in row:
                extra = f" ({row['mb_per_s']} MB/s)"
            if "go_cpu_s" in row:
                extra = f" (CPU s: go {row['go_cpu_s']}" + (f", server {row['server_cpu_s']}" if "server_cpu_s" in row else "") + ")"
            if "baseline_mib" in row:
                extra = f" (idle process {row['baseline_mib']}; {row['open']} open)"
            cpu = f"{row['cpu_per_unit']} {row['cpu_unit']}" if "cpu_per_unit" in row else ""
            if "sys_per_unit" in row:
                cpu += f" (sys {row['sys_per_unit']})"
            out.append(f"| {row['scenario']} | {row['target']} | {row['value']}{extra} | {row['unit']} | {lat} | {cpu} | {row.get('rss_mib', '')} | {ratio} | {row['errors']} | {', '.join(str(v) for v in row['runs'])} |")
        out.append("")
        out.append("| target | required | measured | met? |")
        out.append("|---|---|---|---|")
        for name, need, got, ok in self.targets():
            out.append(f"| {name} | {need} | {got} | {'met' if ok else 'MISSED'} |")
        return "\n".join(out)

    def compact(self):
        """One row per scenario, one column per target: value, and modgate ÷ target in brackets;
        then p50/p99 latencies of the request scenarios the same way."""
        cols = ["modgate", "squid-bump", "mitmdump", "squid", "tinyproxy", "direct", "nginx"]
        out = ["| scenario | unit | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        lat = ["| scenario | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        seen = []
        for row in self.rows:
            if row["id"] not in seen and row["id"] != "g":
                seen.append(row["id"])
        for sid in seen:
            rows = {r["target"]: r for r in self.rows if r["id"] == sid}
            first = next(iter(rows.values()))
            mg = rows.get("modgate")
            cells, lcells = [], []
            for c in cols:
                r = rows.get(c)
                if not r:
                    cells.append("")
                    lcells.append("")
                    continue
                v = r["value"]
                cell = f"{v:g}" if isinstance(v, (int, float)) else str(v)
                if mg and c != "modgate" and isinstance(v, (int, float)) and v:
                    cell += f" ({mg['value'] / v:.2f}x)"
                if r.get("errors"):
                    cell += f" [{r['errors']} errors]"
                cells.append(cell)
                if r.get("p50_ms") not in ("", None):
                    lcells.append("none completed" if r.get("requests") == 0 or r["p50_ms"] == 0 else f"{r['p50_ms']:g} / {r['p99_ms']:g}")
                else:
                    lcells.append("")
            out.append(f"| {first['scenario'][3:]} | {first['unit']} | " + " | ".join(cells) + " |")
            if any(lcells) and first["unit"] in ("req/s", "conn/s", "MB/s", "MiB peak RSS"):
                lat.append(f"| {first['scenario'][3:]} | " + " | ".join(lcells) + " |")
        g = {r["target"]: r for r in self.rows if r["id"] == "g"}
        gout = []
        if g:
            gout = [f"| {next(iter(g.values()))['scenario'][3:]} | median s | CPU s: go / server | runs |", "|---|---|---|---|"]
            for t, r in g.items():
                ref = {"direct": "modgate cold", "file://": "modgate warm"}.get(t)
                extra = f" ({ref} ÷ this: {g[ref]['value'] / r['value']:.2f}x)" if ref in g and r["value"] else ""
                cpu = f"{r['go_cpu_s']} / {r.get('server_cpu_s', '-')}" if "go_cpu_s" in r else ""
                gout.append(f"| {t} | {r['value']}{extra} | {cpu} | {', '.join(str(v) for v in r['runs'])} |")
        return "\n".join(out + [""] + lat + [""] + gout)

    def targets(self):
        """(target, requirement, measured, met) for every ratio the issue sets."""
        res = []

        def ratio(sid, a, b):
            ra, rb = self.value(sid, a), self.value(sid, b)
            if not ra or not rb or not rb["value"]:
                return None
            return ra["value"] / rb["value"]

        def add(name, need, r, ok, fmt="{:.2f}x"):
            if r is not None:
                res.append((name, need, fmt.format(r), ok(r)))

        for c in (1, 16, 64):
            add(f"intercepted small GETs c={c} vs mitmproxy", "≥ 10x", ratio(f"a-c{c}", "modgate", "mitmdump"), lambda r: r >= 10)
            add(f"intercepted small GETs c={c} vs squid ssl_bump", "≥ 1.2x", ratio(f"a-c{c}", "modgate", "squid-bump"), lambda r: r >= 1.2)
        m, s = self.value("a-c16", "modgate"), self.value("a-c16", "squid-bump")
        if m and s:
            res.append(("p99 at c=16 vs squid ssl_bump", "≤ squid's", f"{m['p99_ms']} ms vs {s['p99_ms']} ms", m["p99_ms"] <= s["p99_ms"]))
        for c in (1, 8):
            add(f"zip through interception c={c} vs direct", "≥ 0.6x", ratio(f"b-c{c}", "modgate", "direct"), lambda r: r >= 0.6)
        def cpu_ratio(sid, a, b):
            ra, rb = self.value(sid, a), self.value(sid, b)
            if not ra or not rb or not rb.get("cpu_per_unit"):
                return None
            return ra["cpu_per_unit"] / rb["cpu_per_unit"]

        for c in (1, 8, 64):
            add(f"tunnel throughput c={c} vs direct", "≥ 0.9x", ratio(f"d-tput-c{c}", "modgate", "direct"), lambda r: r >= 0.9)
            add(f"tunnel throughput c={c} vs tinyproxy", "≥ 1.0x", ratio(f"d-tput-c{c}", "modgate", "tinyproxy"), lambda r: r >= 1.0)
            add(f"tunnel throughput c={c} vs squid (issue 23)", "≥ 1.0x", ratio(f"d-tput-c{c}", "modgate", "squid"), lambda r: r >= 1.0)
            add(f"tunnel CPU per GB c={c} vs squid (issue 23)", "≤ 1.0x", cpu_ratio(f"d-tput-c{c}", "modgate", "squid"), lambda r: r <= 1.0)
        add("intercepted 1 KB GET c=16 CPU per request vs squid ssl_bump (issue 23)", "≤ 0.3x", cpu_ratio("a-c16", "modgate", "squid-bump"), lambda r: r <= 0.3)
        add("intercepted 1 KB GET c=16 vs direct (issue 23)", "≥ 0.5x", ratio("a-c16", "modgate", "direct"), lambda r: r >= 0.5)
        m, d = self.value("a-c1", "modgate"), self.value("a-c1", "direct")
        if m and d:
            added = m["p50_ms"] - d["p50_ms"]
            res.append(("p50 added by interception, 1 KB GET c=1 (issue 23)", "< 0.1 ms", f"{added:.3f} ms (p99 {m['p99_ms']} vs {d['p99_ms']} ms)", added < 0.1))
        add("handshakes/s vs squid ssl_bump", "≥ 1.0x", ratio("c", "modgate", "squid-bump"), lambda r: r >= 1.0)
        m = self.value("f-idle-tunnel", "modgate")
        if m:
            res.append((f"RSS with {self.a.idle} idle tunnels", "< 64 MiB", f"{m['value']} MiB", m["value"] < 64))
        m = self.value("f-downloads", "modgate")
        if m:
            res.append((f"peak RSS, {self.a.downloads} concurrent {self.a.zip_mb} MB downloads", "< 128 MiB", f"{m['value']} MiB (VmHWM {m['hwm_mib']})", m["value"] < 128))
        for c in (16, 64):
            for proto in ("h1", "h2"):
                sid = f"e-small-{proto}-c{c}"
                add(f"cache hits vs nginx ({proto}, c={c}, issue 23)", "≥ 1.0x", ratio(sid, "modgate", "nginx"), lambda r: r >= 1.0)
                add(f"cache hit CPU per request vs nginx ({proto}, c={c}, issue 23)", "≤ 1.0x", cpu_ratio(sid, "modgate", "nginx"), lambda r: r <= 1.0)
        add("cache hit zip MB/s vs nginx", "≥ 1.0x", ratio("e-zip", "modgate", "nginx"), lambda r: r >= 1.0)
        add("go build warm vs file://", "≤ 1.3x", ratio("g", "modgate warm", "file://"), lambda r: r <= 1.3)
        add("go build cold vs direct", "≤ 1.1x", ratio("g", "modgate cold", "direct"), lambda r: r <= 1.1)
        return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="short version of every scenario (< 5 minutes)")
    ap.add_argument("--seconds", type=int, default=5, help="per run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--g-repeat", type=int, default=None, help="rounds of scenario g (default 7; a build varies by ±20%% from run to run on a 2-core machine, so more rounds than --repeat)")
    ap.add_argument("--zip-mb", type=int, default=100)
    ap.add_argument("--idle", type=int, default=1000, help="idle connections held in scenario f")
    ap.add_argument("--downloads", type=int, default=20, help="concurrent downloads in scenario f")
    ap.add_argument("--modules", type=int, default=60, help="module dependencies in scenario g (50+)")
    ap.add_argument("--only", default="a,b,c,d,e,f,g", help="comma-separated scenario letters")
    ap.add_argument("--targets", default="", help="comma-separated proxies to measure (default: all; direct and nginx always run)")
    ap.add_argument("--agent-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else "",
                    help="scenario g: the go command's files go under here (another file system than modgate's data, as on a build agent); '' keeps them in the work dir")
    ap.add_argument("--work-dir", default=None, help="put the work directory (modgate's cache, the upstream's files) under this directory instead of the system's temporary one, e.g. a dedicated volume as a gateway's data would be")
    ap.add_argument("--json", default=None, help="write every row (with all runs) here")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--modgate", metavar="BINARY", help="measure this modgate binary instead of target/release/modgate (A/B of builds; implies --no-build)")
    ap.add_argument("--render", metavar="JSON", help="print the tables of an earlier run's --json file and exit")
    ap.add_argument("--compact", action="store_true", help="with --render: one row per scenario, one column per target")
    ap.add_argument("--quiet-wait", type=int, default=90, help="wait up to this many seconds for an idle machine before each round (0: never)")
    a = ap.parse_args()
    if a.render:
        with open(a.render) as f:
            saved = json.load(f)
        b = Bench.__new__(Bench)
        b.a, b.rows = argparse.Namespace(**saved["args"]), saved["rows"]
        print(b.compact() if a.compact else b.report(None, None))
        for note in saved.get("notes", []):
            print(f"\n{note}")
        return
    # SIGTERM unwinds like ctrl-c, so every peer started so far is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.smoke:
        a.seconds, a.repeat, a.zip_mb, a.quiet_wait = 1, 1, min(a.zip_mb, 20), 0
        a.g_repeat = a.g_repeat or 1
    a.g_repeat = a.g_repeat or 7
    started = time.time()
    if a.modgate:
        common.MODGATE = os.path.abspath(a.modgate)
        a.no_build = True
    if not a.no_build:
        log("building release modgate and loadgen")
        build()
    pp.ensure_packages()
    if not os.path.exists(GO):
        raise SystemExit(f"{GO} missing: apt-get install golang-1.19-go")
    b = Bench(a)
    load = open("/proc/loadavg").read().split()[:3]
    log(f"load average before: {' '.join(load)}; work dir {b.work}")
    if float(load[0]) > 1.5:
        log("warning: the machine is busy (1-minute load above 1.5); ratios will be noisy")
    try:
        b.setup()
        for letter in a.only.split(","):
            log(f"scenario {letter}")
            getattr(b, f"scenario_{letter.strip()}")()
        b.notes.append(f"rounds that waited for an idle machine: {b.waited[0]} ({b.waited[1]:.0f} s in all); rounds measured while still busy: {b.waited[2]}")
        mg = b.peers.get("modgate") if hasattr(b, "peers") else None
        if mg:
            b.notes.append(f"main modgate instance (scenarios a-e): VmHWM {pp.status_kib(mg.pid, 'VmHWM') / 1024:.1f} MiB")
    finally:
        b.procs.stop()
        cleanup(b.work)
    load_after = open("/proc/loadavg").read().split()[:3]
    elapsed = time.time() - started
    print(f"\n<!-- peers.py {'--smoke' if a.smoke else ''} seconds={a.seconds} repeat={a.repeat} g_repeat={a.g_repeat} zip={a.zip_mb}MB idle={a.idle} downloads={a.downloads} modules={a.modules}; "
          f"{elapsed / 60:.1f} min; load average before {' '.join(load)}, after {' '.join(load_after)} -->")
    print("<!-- " + "; ".join(f"{k}: {v}" for k, v in pp.versions().items()) + " -->\n")
    print(b.report(started, elapsed))
    for note in b.notes:
        print(f"\n{note}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "notes": b.notes, "load_before": load, "load_after": load_after, "minutes": elapsed / 60, "versions": pp.versions(), "rows": b.rows}, f, indent=1)


if __name__ == "__main__":
    main()
