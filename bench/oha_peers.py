#!/usr/bin/env python3
"""Intercepted 1 KB keep-alive GETs measured the way issue 23 is checked: oha as the client,
nginx as the TLS upstream, through modgate and through Squid with ssl_bump, and oha straight to
nginx ("direct"); interleaved rounds, medians, each server's CPU per request (its process
tree's user + system time from /proc, the kernel part in brackets).

bench/peers.py measures the same paths with bench/loadgen against bench/loadgen's file server;
this is the cross-check with the issue's own tools. oha is not a Debian package:

    cargo install oha --locked --root /tmp/oha
    python3 bench/oha_peers.py --oha /tmp/oha/bin/oha [--concurrency 16] [--rounds 3] [--seconds 5]
"""

import argparse
import json
import os
import statistics
import subprocess

import common
import peerprocs as pp
from common import LOADGEN, Procs, tmpdir


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--binary", default=common.MODGATE)
    a = ap.parse_args()
    pp.ensure_packages()
    work = tmpdir("modgate-oha-")
    os.chmod(work, 0o755)
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        os.makedirs(tree)
        os.chmod(tree, 0o755)
        with open(os.path.join(tree, "small.bin"), "wb") as f:
            f.write(os.urandom(1024))
        certs = os.path.join(work, "certs")
        subprocess.run([LOADGEN, "certs", "--dir", certs], check=True, capture_output=True)
        up_ca = f"{certs}/ca.pem"
        nginx = pp.start_nginx(procs, work, tree, certs)
        port = int(nginx.addr.rsplit(":", 1)[1])
        common.MODGATE = os.path.abspath(a.binary)
        mg, proxy, _, ca = common.start_modgate(procs, work, "modgate", common.loopback_upstream(up_ca, port))
        common.drain(mg)
        squid = pp.start_squid(procs, work, up_ca, bump=True)
        targets = {
            "modgate": (proxy, ca, mg.pid),
            "squid-bump": (squid.addr, squid.ca, squid.pid),
            "direct": (None, up_ca, nginx.pid),
        }
        runs = {t: [] for t in targets}
        names = list(targets)
        for rnd in range(a.rounds):
            shift = rnd % len(names)
            for t in names[shift:] + names[:shift]:
                via, cacert, pid = targets[t]
                cmd = [a.oha, "-z", f"{a.seconds}s", "-c", str(a.concurrency), "--no-tui", "--output-format", "json", "--cacert", cacert]
                if via:
                    cmd += ["-x", f"http://{via}"]
                cmd.append(f"https://localhost:{port}/small.bin")
                user0, sys0 = pp.tree_cpu_split(pid)
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                user1, sys1 = pp.tree_cpu_split(pid)
                r = json.loads(out)
                n = sum(r["statusCodeDistribution"].values())
                if r["statusCodeDistribution"].get("200", 0) != n or r["summary"]["successRate"] < 1.0:
                    raise SystemExit(f"{t}: not every request answered 200: {r['statusCodeDistribution']}, errors {r.get('errorDistribution')}")
                runs[t].append({
                    "rps": r["summary"]["requestsPerSec"],
                    "cpu": (user1 - user0 + sys1 - sys0) / n * 1e6,
                    "sys": (sys1 - sys0) / n * 1e6,
                    "p50": r["latencyPercentiles"]["p50"] * 1000,
                    "p99": r["latencyPercentiles"]["p99"] * 1000,
                })
        med = {t: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for t, rs in runs.items()}
        print(f"intercepted 1 KB GET, keep-alive, c={a.concurrency}, oha, nginx upstream, {a.rounds} rounds of {a.seconds} s (medians)")
        for t in names:
            m = med[t]
            print(f"  {t:11} {m['rps']:9.0f} req/s ({m['rps'] / med['direct']['rps']:.2f}x direct)  CPU {m['cpu']:5.1f} µs/request (kernel {m['sys']:4.1f})"
                  f"  p50 {m['p50']:.3f} p99 {m['p99']:.3f} ms  runs {[round(x['rps']) for x in runs[t]]}")
        print(f"modgate CPU per request ÷ squid ssl_bump's: {med['modgate']['cpu'] / med['squid-bump']['cpu']:.2f}x;"
              f" modgate's kernel part alone: {med['modgate']['sys'] / med['squid-bump']['cpu']:.2f}x")
    finally:
        procs.stop()
        common.cleanup(work)


if __name__ == "__main__":
    main()
