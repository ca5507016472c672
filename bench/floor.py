#!/usr/bin/env python3
"""Where modgate's CPU goes on an intercepted (TLS-terminated, forwarded) transfer, against the
floor no user-space change can remove (issue 23, item 3).

A load client fetches through modgate from an HTTPS file server on loopback (bench/loadgen on
both ends); while it runs, `perf record` samples modgate alone and every sample is put in one
of four classes:

  kernel     system calls, TCP on loopback, wake-ups (everything in kernel space)
  aes-gcm    ring's AES-GCM and GHASH: each byte decrypted once and encrypted once
  memcpy     libc memcpy/memmove (the copies inside rustls' buffered API and hyper's buffers)
  other      the rest of user space: hyper, rustls' record layer, tokio, malloc, modgate

"floor" is kernel + aes-gcm; the figure the issue names is modgate's CPU over that floor,
total ÷ (kernel + aes-gcm). A first load of the same length, without perf, gives modgate's user
and system CPU per unit from /proc, and what the file server and the load client spent per unit
beside it.

    cargo build --release -p modgate -p loadgen
    python3 bench/floor.py [--mode zip|small] [--concurrency 8] [--seconds 5] [--binary B]

zip: one 100 MB GET per request (CPU per GB); small: 1 KB keep-alive GETs (CPU per request).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import common
from common import LOADGEN, Procs, tmpdir

CLASSES = ("kernel", "aes-gcm", "memcpy", "other")


def classify(report):
    """Percent per class from `perf report --sort dso,sym --stdio` text."""
    share = dict.fromkeys(CLASSES, 0.0)
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\S+\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        pct, space, sym = float(m.group(1)), m.group(2), m.group(3)
        if space == "k":
            share["kernel"] += pct
        elif re.search(r"aes|gcm|ghash", sym, re.I):
            share["aes-gcm"] += pct
        elif re.search(r"memmove|memcpy", sym):
            share["memcpy"] += pct
        else:
            share["other"] += pct
    return share


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("zip", "small"), default="zip")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--binary", default=common.MODGATE)
    a = ap.parse_args()
    if not shutil.which("perf"):
        raise SystemExit("perf is needed (Debian: linux-perf)")
    work = tmpdir("modgate-floor-")
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        os.makedirs(tree)
        name = "big.bin" if a.mode == "zip" else "small.bin"
        with open(os.path.join(tree, name), "wb") as f:
            f.write(os.urandom(100 << 20 if a.mode == "zip" else 1024))
        up, certs = common.start_file_server(procs, work, tree)
        server = procs.procs[-1]
        port = int(up.rsplit(":", 1)[1])
        common.MODGATE = os.path.abspath(a.binary)
        mg, proxy, _, ca = common.start_modgate(procs, work, "floor", common.loopback_upstream(f"{certs}/ca.pem", port))
        common.drain(mg)
        url = f"https://localhost:{port}/{name}"
        load = [LOADGEN, "run", "--url", url, "--proxy", proxy, "--ca", ca, "--concurrency", str(a.concurrency)]
        subprocess.run(load + ["--requests", str(a.concurrency)], check=True, capture_output=True)  # warm the lanes
        # Two loads of --seconds: the first for /proc's CPU per unit (perf's sampling costs
        # modgate CPU of its own), the second for the profile, a second longer at each end.
        user0, sys0 = common.cpu_split(mg.pid)
        server0, client0 = sum(common.cpu_split(server.pid)), common.children_cpu()
        result = run_load(load + ["--duration", f"{a.seconds}s"])
        user1, sys1 = common.cpu_split(mg.pid)
        server1, client1 = sum(common.cpu_split(server.pid)), common.children_cpu()
        runner = threading.Thread(target=run_load, args=(load + ["--duration", f"{a.seconds + 2}s"],))
        runner.start()
        threading.Event().wait(1)
        data = os.path.join(work, "perf.data")
        subprocess.run(["perf", "record", "-q", "-o", data, "-p", str(mg.pid), "--", "sleep", str(a.seconds)],
                       check=True, capture_output=True)
        runner.join()
        report = subprocess.run(["perf", "report", "-i", data, "--sort", "dso,sym", "--stdio"],
                                capture_output=True, text=True, check=True).stdout
        share = classify(report)
        total = sum(share.values())
        floor = share["kernel"] + share["aes-gcm"]
        if a.mode == "zip":
            units, rate = result["bytes"] / 1e9, f"{result['mb_per_s']:.0f} MB/s"
        else:
            units, rate = result["requests"] / 1e6, f"{result['rps']:.0f} req/s"
        user, system = (user1 - user0) / units, (sys1 - sys0) / units
        per = "s per GB" if a.mode == "zip" else "µs per request"
        print(f"mode {a.mode}, c={a.concurrency}, {a.seconds} s: {rate}")
        print(f"modgate CPU {user + system:.3f} {per} (user {user:.3f}, system {system:.3f}) [/proc, the load without perf]")
        print(f"in the same load: file server {(server1 - server0) / units:.3f}, load client {(client1 - client0) / units:.3f} {per}")
        for c in CLASSES:
            print(f"  {c:8} {share[c] / total * 100:5.1f}%")
        print(f"total ÷ (kernel + aes-gcm) = {total / floor:.2f}x  [perf, {total:.0f}% of samples classified]")
    finally:
        procs.stop()
        common.cleanup(work)


def run_load(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    if res["errors"]:
        raise RuntimeError(f"{res['errors']} requests failed")
    return res


if __name__ == "__main__":
    sys.exit(main())
