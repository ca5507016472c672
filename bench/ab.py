#!/usr/bin/env python3
"""A/B of modgate builds: two or more modgate binaries and the direct connection, in rounds
against one upstream (each round starting with the next target, so none always runs first), with
the CPU each proxy used per unit of work. For before/after numbers of a performance change
(BENCHMARKS.md), where the peers do not matter.

    cp target/release/modgate /tmp/modgate-before     # build, copy; change; build again
    python3 bench/ab.py /tmp/modgate-before target/release/modgate --mode zip --concurrency 1

Modes (the same host routing as bench/peers.py):
  zip      intercepted 100 MB GET through the pass-through forward route    MB/s
  small    intercepted 1 KB GET, keep-alive                                  req/s
  tunnel   100 MB GET through a blind CONNECT tunnel                         MB/s
  cache    module cache hit on a .info file (add --h2 for HTTP/2)            req/s
  fill     cache misses: .info then .mod of --fill-modules new modules per    req/s
           round, each fetched once (a cold go build's small requests)

For each binary: median of the rounds, every round, the ratio to direct, and CPU seconds the
proxy process used per second of load and per MB (or per 1,000 requests). CPU per unit of work is
much steadier than throughput on a shared 2-core machine. Below each target, the CPU per unit the
upstream server and the load client used in the same runs: when the machine is saturated, the
ratio to direct is about direct's total CPU per unit over the proxied path's total (upstream,
client and proxy), which tells what any proxy could reach.
"""

import argparse
import json
import os
import statistics
import subprocess

import common
from common import LOADGEN, Procs, tmpdir

PATHS = {
    "zip": "/example.com/ab/@v/v1.0.0.zip",
    "tunnel": "/example.com/ab/@v/v1.0.0.zip",
    "small": "/small.bin",
    "cache": "/example.com/ab/@v/v1.0.0.info",
    "fill": None,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", help="modgate binaries to compare")
    ap.add_argument("--mode", choices=sorted(PATHS), default="zip")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--h2", action="store_true")
    ap.add_argument("--fill-modules", type=int, default=50, help="fill mode: new modules per round and target")
    a = ap.parse_args()
    work = tmpdir("modgate-ab-")
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        os.makedirs(os.path.join(tree, "example.com/ab/@v"))
        with open(os.path.join(tree, "small.bin"), "wb") as f:
            f.write(os.urandom(1024))
        subprocess.run([LOADGEN, "mkzip", "--module", "example.com/ab", "--version", "v1.0.0", "--size", str(100 << 20), "--out", os.path.join(tree, PATHS["zip"][1:])], check=True)
        with open(os.path.join(tree, "example.com/ab/@v/v1.0.0.info"), "w") as f:
            f.write('{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}')
        names = list(a.binaries) + ["direct"]
        fill = []  # fill mode: per (round, target) the URL paths, each module used once
        if a.mode == "fill":
            for i in range(a.rounds * len(names)):
                paths = []
                for m in range(a.fill_modules):
                    d = os.path.join(tree, f"example.com/fill/r{i}/m{m}/@v")
                    os.makedirs(d)
                    with open(os.path.join(d, "v1.0.0.info"), "w") as f:
                        f.write('{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}')
                    with open(os.path.join(d, "v1.0.0.mod"), "w") as f:
                        f.write(f"module example.com/fill/r{i}/m{m}\n")
                    paths += [f"/example.com/fill/r{i}/m{m}/@v/v1.0.0.info", f"/example.com/fill/r{i}/m{m}/@v/v1.0.0.mod"]
                fill.append(paths)
        certs = os.path.join(work, "certs")
        subprocess.run([LOADGEN, "certs", "--dir", certs], check=True)
        up = procs.start([LOADGEN, "serve", "--dir", tree, "--cert", f"{certs}/cert.pem", "--key", f"{certs}/key.pem"])
        port = int(up.stdout.readline().strip().rsplit(":", 1)[1])
        gateways = {}
        for i, binary in enumerate(a.binaries):
            common.MODGATE = os.path.abspath(binary)
            p, proxy, _admin, ca = common.start_modgate(procs, work, f"m{i}", f"""
[intercept]
hosts = ["localhost"]
[upstream]
extra_ca_file = "{certs}/ca.pem"
[upstream.overrides]
"proxy.golang.org" = "https://localhost:{port}"
""")
            gateways[binary] = (p.pid, proxy, ca)
        path = PATHS[a.mode]
        results = {n: [] for n in names}
        latency = {n: [] for n in names}
        others = {n: [] for n in names}
        for rnd in range(a.rounds):
            # Each round starts one later in the list: what runs first in a round (right after
            # the previous round's last target) differs, and a position bias evens out.
            shift = rnd % len(names)
            for j, n in enumerate(names[shift:] + names[:shift]):
                paths = fill[rnd * len(names) + j] if a.mode == "fill" else [path]
                if n == "direct":
                    host = "127.0.0.1" if a.mode == "tunnel" else "localhost"
                    args, pid = [f"--url=https://{host}:{port}{p}" for p in paths] + ["--ca", f"{certs}/ca.pem"], up.pid
                else:
                    pid, proxy, ca = gateways[n]
                    if a.mode == "tunnel":
                        args = [f"--url=https://127.0.0.1:{port}{p}" for p in paths] + ["--ca", f"{certs}/ca.pem"]
                    elif a.mode in ("cache", "fill"):
                        args = [f"--url=https://proxy.golang.org{p}" for p in paths] + ["--ca", ca]
                    else:
                        args = [f"--url=https://localhost:{port}{p}" for p in paths] + ["--ca", ca]
                    args += ["--proxy", proxy]
                args += ["--concurrency", str(a.concurrency)] + (["--h2"] if a.h2 else [])
                # fill: every URL once (misses); otherwise for --seconds
                args += ["--requests", str(len(paths))] if a.mode == "fill" else ["--duration", f"{a.seconds}s"]
                before, up_before, client_before = common.cpu_seconds(pid), common.cpu_seconds(up.pid), common.children_cpu()
                out = subprocess.run([LOADGEN, "run"] + args, capture_output=True, text=True, check=True)
                used = common.cpu_seconds(pid) - before
                # The other two ends: what a proxy adds is not only its own CPU.
                others[n].append((common.cpu_seconds(up.pid) - up_before, common.children_cpu() - client_before))
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if r["errors"]:
                    raise SystemExit(f"{n}: {r['errors']} requests failed")
                results[n].append((r["mb_per_s"] if a.mode in ("zip", "tunnel") else r["rps"], used, r["seconds"]))
                latency[n].append((r["p50_ms"], r["p99_ms"]))
        unit = "MB/s" if a.mode in ("zip", "tunnel") else "req/s"
        per = "ms CPU/MB" if unit == "MB/s" else "ms CPU/1000 req"
        direct = statistics.median(v for v, _, _ in results["direct"])
        each = f"{2 * a.fill_modules} requests" if a.mode == "fill" else f"{a.seconds} s"
        print(f"mode {a.mode}, concurrency {a.concurrency}{', h2' if a.h2 else ''}, {a.rounds} rounds of {each}")
        for n in names:
            vals = [v for v, _, _ in results[n]]
            med = statistics.median(vals)
            cores = statistics.median(c / secs for _, c, secs in results[n])
            scale = 1000.0 if unit == "MB/s" else 1e6
            cost = statistics.median(c / (v * secs) * scale for v, c, secs in results[n] if v)
            who = "upstream" if n == "direct" else "proxy"
            p50 = statistics.median(x for x, _ in latency[n])
            p99 = statistics.median(y for _, y in latency[n])
            print(f"{n:44} {med:10.1f} {unit:5} ({med / direct:.2f}x direct)  p50/p99 {p50:.3f}/{p99:.3f} ms  {who} {cores:.2f} cores, {cost:.3f} {per}  runs {[round(v) for v in vals]}")
            if n != "direct":
                ends = [(u / (v * secs) * scale, c / (v * secs) * scale) for (v, _, secs), (u, c) in zip(results[n], others[n]) if v]
                print(f"{'':44} upstream {statistics.median(u for u, _ in ends):.3f}, client {statistics.median(c for _, c in ends):.3f} {per}")
            else:
                ends = [(c / (v * secs) * scale) for (v, _, secs), (_, c) in zip(results[n], others[n]) if v]
                print(f"{'':44} client {statistics.median(ends):.3f} {per}")
    finally:
        procs.stop()
        common.cleanup(work)


if __name__ == "__main__":
    main()
