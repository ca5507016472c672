#!/usr/bin/env python3
"""Fleet cold start (issue: production scale, item 5).

A build's downloads — .info, .mod and .zip of --modules modules from bench/gomodtree.py, plus
--big large module zips (MB each) — sit on a paced TLS upstream on loopback (loadgen serve
--rate/--first-byte: each answer waits --first-byte, then its body flows at --rate bytes/s,
like proxy.golang.org across a wide-area link). An agent is one loadgen process fetching every
file once through modgate (CONNECT, MITM), --concurrency at a time, as the go command does.

Each trial starts two fresh gateways (empty caches), one after the other:
  one    a single agent's cold build;
  fleet  --agents agents starting the same cold build at once.
The figure of merit is slowest(fleet) / one, median over --trials (target ≤ 1.2): followers
must get bytes while the leader's fill is in progress, not after it. `--modgate PATH` runs
another build of modgate (for a before/after comparison in one run, interleaved per trial).

Usage: python3 bench/fleet_cold.py [--trials 3] [--agents 32] [--modgate PATH ...]
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import common
import gomodtree
from common import LOADGEN, Procs, build, cleanup, start_modgate, tmpdir


def start_paced_upstream(procs, work, tree, rate, first_byte_ms):
    certs = os.path.join(work, "up-certs")
    subprocess.run([LOADGEN, "certs", "--dir", certs], check=True)
    up = procs.start([LOADGEN, "serve", "--dir", tree, "--cert", f"{certs}/cert.pem", "--key", f"{certs}/key.pem",
                      "--rate", str(rate), "--first-byte", f"{first_byte_ms}ms"])
    return up.stdout.readline().strip(), certs


def gateway(procs, work, name, binary, up_addr, certs):
    common.MODGATE = binary
    return start_modgate(procs, work, name, f"""
[sumdb]
verify = "off"
[upstream]
extra_ca_file = "{certs}/ca.pem"
[upstream.overrides]
"proxy.golang.org" = "https://{up_addr}"
"sum.golang.org" = "https://127.0.0.1:9"
""")


def agents(n, urls, proxy, ca, concurrency):
    """Starts n agents at once; returns each one's wall time (s) and total errors."""
    args = ["--proxy", proxy, "--ca", ca, "--requests", str(len(urls)), "--concurrency", str(concurrency),
            "--duration", "600s"]
    for u in urls:
        args += ["--url", u]
    t0 = time.monotonic()
    ps = [subprocess.Popen([LOADGEN, "run"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(n)]
    times, errors = [], 0
    for p in ps:
        out, err = p.communicate()
        times.append(time.monotonic() - t0)
        if p.returncode != 0:
            raise RuntimeError(f"loadgen failed: {err}")
        r = json.loads(out.strip().splitlines()[-1])
        errors += r["errors"] + (len(urls) - r["requests"])
    return times, errors


def trial(work, k, binary, label, up_addr, certs, urls, a):
    out = {}
    for mode, n in (("one", 1), ("fleet", a.agents)):
        procs = Procs()
        try:
            name = f"{label}-{mode}-{k}"
            _, proxy, _, ca = gateway(procs, work, name, binary, up_addr, certs)
            times, errors = agents(n, urls, proxy, ca, a.concurrency)
            if errors:
                raise RuntimeError(f"{label} {mode}: {errors} failed requests")
            out[mode] = times
        finally:
            procs.stop()
            cleanup(os.path.join(work, f"{name}-data"))
    return max(out["fleet"]) / out["one"][0], out["one"][0], max(out["fleet"]), statistics.median(out["fleet"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--modules", type=int, default=40)
    ap.add_argument("--big", default="8,24", help="sizes in MB of the large module zips")
    ap.add_argument("--rate", type=int, default=2_000_000, help="upstream bytes/s per answer")
    ap.add_argument("--first-byte-ms", type=int, default=50)
    ap.add_argument("--modgate", action="append", default=[], help="other modgate binaries to compare")
    a = ap.parse_args()
    build()
    work = tmpdir("modgate-fleet-")
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        gomodtree.make_tree(tree, a.modules)
        paths = []
        for i in range(a.modules):
            base = f"/{gomodtree.module_path(i)}/@v/{gomodtree.VERSION}"
            paths += [base + ".info", base + ".mod", base + ".zip"]
        big = []
        for j, mb in enumerate(int(x) for x in a.big.split(",") if x):
            mod = f"example.com/big{j}"
            d = os.path.join(tree, mod, "@v")
            os.makedirs(d)
            subprocess.run([LOADGEN, "mkzip", "--module", mod, "--version", "v1.0.0", "--size", str(mb << 20),
                            "--out", os.path.join(d, "v1.0.0.zip")], check=True)
            big.append(f"/{mod}/@v/v1.0.0.zip")
        # The large zips first: the go command starts them beside the rest.
        paths = big + paths
        total = sum(os.path.getsize(os.path.join(tree, p.lstrip("/"))) for p in paths)
        urls = [f"https://proxy.golang.org{p}" for p in paths]
        up_addr, certs = start_paced_upstream(procs, work, tree, a.rate, a.first_byte_ms)

        binaries = [("modgate", common.MODGATE)] + [(f"other{i}", b) for i, b in enumerate(a.modgate)]
        results = {label: [] for label, _ in binaries}
        for k in range(a.trials):
            for label, binary in binaries:
                r = trial(work, k, binary, label, up_addr, certs, urls, a)
                results[label].append(r)
                print(f"trial {k} {label}: one {r[1]:.2f} s, fleet slowest {r[2]:.2f} s (median {r[3]:.2f} s), "
                      f"ratio {r[0]:.2f}", flush=True)

        print(f"\n{len(urls)} files, {total / 1e6:.1f} MB per build; upstream {a.rate / 1e6:g} MB/s per answer, "
              f"{a.first_byte_ms} ms to first byte; {a.agents} agents x {a.concurrency} at a time; "
              f"median of {a.trials} trials\n")
        print("| build | one agent cold (s) | slowest of fleet (s) | median of fleet (s) | slowest / one |")
        print("|---|---:|---:|---:|---:|")
        for label, binary in binaries:
            rs = results[label]
            med = lambda i: statistics.median(r[i] for r in rs)  # noqa: E731
            print(f"| {label} ({os.path.relpath(binary, common.ROOT)}) | {med(1):.2f} | {med(2):.2f} | {med(3):.2f} | "
                  f"{med(0):.2f}x |")
    finally:
        procs.stop()
        cleanup(work)


if __name__ == "__main__":
    main()
