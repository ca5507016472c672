"""Shared helpers for modgate's benchmark scripts: build, start processes on loopback, run the
load client, take medians, read peak RSS."""

import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
MODGATE = os.path.join(RELEASE, "modgate")
LOADGEN = os.path.join(RELEASE, "loadgen")


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "modgate", "-p", "loadgen"], cwd=ROOT, check=True)


class Procs:
    """Processes started by a benchmark; all are killed on exit."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=kw.pop("stderr", subprocess.DEVNULL), text=True, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_seconds(pid):
    """User + system CPU seconds used so far by process `pid` (not its children)."""
    return sum(cpu_split(pid))


def cpu_split(pid):
    """(user, system) CPU seconds used so far by process `pid` (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def children_cpu():
    """CPU seconds (user + system) of this script's waited-for children (the load client)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def loadgen(args):
    out = subprocess.run([LOADGEN, "run"] + args, check=True, capture_output=True, text=True)
    if out.stderr.strip():
        sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(args, repeat):
    """Runs the load `repeat` times; returns the run with the median throughput, plus all."""
    runs = [loadgen(args) for _ in range(repeat)]
    key = "mb_per_s" if runs[0]["mb_per_s"] > 50 else "rps"
    runs.sort(key=lambda r: r[key])
    med = dict(runs[len(runs) // 2])
    med["p50_ms"] = statistics.median(r["p50_ms"] for r in runs)
    med["p99_ms"] = statistics.median(r["p99_ms"] for r in runs)
    med["errors"] = sum(r["errors"] for r in runs)
    return med


def wait_http(url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def tmpdir(prefix, parent=None):
    """A new work directory under `parent` (default: the system's temporary directory)."""
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def cleanup(d):
    shutil.rmtree(d, ignore_errors=True)


def drain(p):
    """Reads a child's stdout to the end in a thread, so a chatty child never blocks on a pipe."""
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()


def loopback_upstream(up_ca, up_port):
    """modgate settings for a bench whose upstream is the HTTPS file server on loopback at
    `up_port` (certificate from `up_ca`): `localhost` is intercepted, proxy.golang.org is served
    from it, the checksum database is not consulted (the bench's modules are in none, and nothing
    may leave loopback), and loopback is the one address exception agents' traffic needs."""
    return f"""
[intercept]
hosts = ["localhost"]
[sumdb]
verify = "off"
[egress]
allow_addresses = ["127.0.0.0/8"]
connect_ports = ["1-65535"]
[upstream]
extra_ca_file = "{up_ca}"
[upstream.overrides]
"proxy.golang.org" = "https://localhost:{up_port}"
"""


def start_modgate(procs, work, name, extra="", wrap=(), ready_timeout=20):
    """Starts a release modgate on ephemeral loopback ports with its data and CA under
    work/<name>-data and work/<name>-ca, plus `extra` TOML, run under the command `wrap` if
    given (valgrind, say). Returns (process, proxy, admin, ca)."""
    cfg = os.path.join(work, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
data_dir = "{work}/{name}-data"
[ca]
dir = "{work}/{name}-ca"
[log]
level = "warn"
access_log = false
{extra}
""")
    p = procs.start([*wrap, MODGATE, "serve", "--config", cfg])
    proxy = admin = None
    for line in p.stdout:
        if "admin on http://" in line:
            admin = line.split("admin on http://")[1].split()[0]
            proxy = line.split("proxy on ")[1].split(",")[0]
        if line.startswith("export GIT_SSL_CAINFO"):
            break
    wait_http(f"http://{admin}/readyz", ready_timeout)
    return p, proxy, admin, f"{work}/{name}-ca/ca.pem"


def start_file_server(procs, work, tree):
    """Serves `tree` over HTTPS (loadgen serve) with a fresh test CA. Returns (address, certs dir)."""
    certs = os.path.join(work, "up-certs")
    subprocess.run([LOADGEN, "certs", "--dir", certs], check=True)
    up = procs.start([LOADGEN, "serve", "--dir", tree, "--cert", f"{certs}/cert.pem", "--key", f"{certs}/key.pem"])
    return up.stdout.readline().strip(), certs


def gateway_for(procs, work, up_addr, certs, wrap=()):
    """A modgate that serves proxy.golang.org from the file server at `up_addr`, run under
    `wrap` if given. The checksum database is neither consulted nor reachable (a closed
    loopback port): nothing leaves loopback."""
    return start_modgate(procs, work, "modgate", wrap=wrap, extra=f"""
[sumdb]
verify = "off"
[upstream]
extra_ca_file = "{certs}/ca.pem"
[upstream.overrides]
"proxy.golang.org" = "https://{up_addr}"
"sum.golang.org" = "https://127.0.0.1:9"
""")
