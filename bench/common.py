"""Shared helpers for modgate's benchmark scripts: build, start processes on loopback, run the
load client, take medians, read peak RSS."""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
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


def tmpdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    return d


def cleanup(d):
    shutil.rmtree(d, ignore_errors=True)
