#!/usr/bin/env python3
"""Instructions per request on modgate's hot paths, counted by callgrind (issue 23).

Instruction counts are repeatable for the same binary and inputs whatever else the machine is
doing, so a regression on a hot path shows as a number even on a noisy 2-core machine. modgate
runs under `valgrind --tool=callgrind` (instrumentation off until the load starts); each path
is measured by zeroing the counters, running requests with bench/loadgen, and dumping; the figure
is the difference between a run of 2N and a run of N requests (after an uncounted warm-up), so
the client's TLS handshakes cancel and what is left is the steady-state cost of one request:

  hit-h1      cache hit of a small .mod/.info, HTTP/1.1 keep-alive, c=16
  hit-h2      the same over h2
  intercept   intercepted 1 KB GET forwarded to the upstream (not cached), keep-alive, c=16
  tunnel-mb   blind CONNECT tunnel: one 16 MB GET (instructions per MB)
  pair        no modgate: the same 1 KB keep-alive GET at c=16 straight from the load client
              (bench/loadgen run: hyper + rustls client) to a second file server (loadgen
              serve: hyper + rustls server), both counted. An intercepting proxy is a TLS
              server and a TLS client in one; this is what the bare pair of them costs, the
              reference for `intercept`.

Usage:
  python3 bench/instructions.py [--requests 4000] [--modgate BINARY] [--top 25] [--nginx]
Prints instructions per request (or per MB) for each path and, with --top, the functions that
cost the most on each path (callgrind_annotate, exclusive).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import common
from common import LOADGEN, Procs, tmpdir


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def total_ir(path):
    """The `summary:` / `totals:` instruction count of a callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--modgate", default=common.MODGATE)
    ap.add_argument("--top", type=int, default=0, help="show the N costliest functions per path")
    ap.add_argument("--only", default="hit-h1,hit-h2,intercept,tunnel-mb,pair")
    ap.add_argument("--nginx", action="store_true", help="nginx as the upstream file server instead of bench/loadgen's")
    ap.add_argument("--keep", metavar="DIR", help="copy each path's callgrind dump here (for callgrind_annotate or kcachegrind)")
    a = ap.parse_args()
    work = tmpdir("modgate-ir-")
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        mdir = os.path.join(tree, "example.com/ir/@v")
        os.makedirs(mdir)
        with open(os.path.join(mdir, "v1.0.0.mod"), "w") as f:
            f.write("module example.com/ir\n\ngo 1.19\n")
        with open(os.path.join(mdir, "v1.0.0.info"), "w") as f:
            f.write('{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}')
        with open(os.path.join(tree, "small.bin"), "wb") as f:
            f.write(os.urandom(1024))
        with open(os.path.join(tree, "big.bin"), "wb") as f:
            f.write(os.urandom(16 << 20))
        if a.nginx:
            # nginx answers with the headers of a real web server (nine, `Connection:
            # keep-alive` among them) over TLS 1.2, where bench/loadgen's server sends two.
            import peerprocs
            os.chmod(work, 0o755)
            os.chmod(tree, 0o755)
            certs = os.path.join(work, "up-certs")
            subprocess.run([LOADGEN, "certs", "--dir", certs], check=True, capture_output=True)
            up = peerprocs.start_nginx(procs, work, tree, certs).addr
        else:
            up, certs = common.start_file_server(procs, work, tree)
        port = int(up.rsplit(":", 1)[1])
        out = os.path.join(work, "callgrind.out")
        callgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        common.MODGATE = a.modgate
        mg, proxy, _, ca = common.start_modgate(procs, work, "ir", common.loopback_upstream(f"{certs}/ca.pem", port), wrap=callgrind, ready_timeout=180)
        common.drain(mg)
        small = ["https://proxy.golang.org/example.com/ir/@v/v1.0.0.mod", "https://proxy.golang.org/example.com/ir/@v/v1.0.0.info"]
        # Fill the cache (and warm the leaf certificates) before anything is counted.
        subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "--proxy", f"http://{proxy}", "--cacert", ca, small[0], small[1]], check=True)
        subprocess.run([LOADGEN, "run", "--url", f"https://localhost:{port}/small.bin", "--proxy", proxy, "--ca", ca, "--requests", "20", "--concurrency", "2"], check=True, capture_output=True)
        paths = {
            "hit-h1": (sum((["--url", u] for u in small), []) + ["--ca", ca, "--concurrency", "16"], a.requests, "request"),
            "hit-h2": (sum((["--url", u] for u in small), []) + ["--ca", ca, "--concurrency", "16", "--h2"], a.requests, "request"),
            "intercept": (["--url", f"https://localhost:{port}/small.bin", "--ca", ca, "--concurrency", "16"], a.requests, "request"),
            "tunnel-mb": (["--url", f"https://127.0.0.1:{port}/big.bin", "--ca", f"{certs}/ca.pem", "--concurrency", "1"], 4, "MB"),
        }
        results = []
        def load(name, args, n):
            r = subprocess.run([LOADGEN, "run", *args, "--proxy", proxy, "--requests", str(n)], capture_output=True, text=True)
            res = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
            if res is None or res["errors"]:
                raise RuntimeError(f"loadgen {name}: {r.stderr[-1000:]}")

        def counted(name, args, n):
            """Instructions modgate spent on one loadgen run of n requests, and the dump."""
            subprocess.run(["callgrind_control", "--instr=on", str(mg.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "--zero", str(mg.pid)], check=True, capture_output=True)
            load(name, args, n)
            subprocess.run(["callgrind_control", "--dump", str(mg.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "--instr=off", str(mg.pid)], check=True, capture_output=True)
            dumps = sorted((f for f in os.listdir(work) if f.startswith("callgrind.out.")), key=lambda f: os.path.getmtime(os.path.join(work, f)))
            dump = os.path.join(work, dumps[-1])
            return total_ir(dump), dump

        for i, name in enumerate(p for p in a.only.split(",") if p):
            if name == "pair":
                results += bare_pair(procs, work, tree, a.requests)
                continue
            args, n, unit = paths[name]
            # Every run opens its own client connections (16 TLS handshakes at c=16) and a
            # first run also fills the upstream pool: a warm-up run fills the pool, then the
            # cost per unit is the difference between a run of 2n and a run of n, so
            # handshakes cancel and what remains is the steady-state cost of one more unit.
            load(name, args, max(n // 10, 32))
            ir1, dump1 = counted(name, args, n)
            ir2, dump = counted(name, args, 2 * n)
            ir = ir2 - ir1
            if a.keep:
                os.makedirs(a.keep, exist_ok=True)
                shutil.copy(dump1, os.path.join(a.keep, f"callgrind.{name}.n"))
                shutil.copy(dump, os.path.join(a.keep, f"callgrind.{name}"))
            units = n * 16 if unit == "MB" else n
            results.append((name, ir / units, unit))
            log(f"{name}: {ir / units:,.0f} instructions per {unit} (steady state; a run of {2 * n} minus a run of {n}; {ir2 / (2 * units):,.0f} with handshakes)")
            if a.top:
                print(f"\n{name}: top {a.top} functions per {unit} (steady state, exclusive instructions)")
                for fn, v in top_functions(dump1, dump, units)[: a.top]:
                    print(f"  {v:>10,.0f}  {fn[:180]}")
        print("\n| path | instructions per unit | unit |\n|---|---:|---|")
        for name, v, unit in results:
            print(f"| {name} | {v:,.0f} | {unit} |")
        got = dict((name, v) for name, v, _ in results)
        if "intercept" in got and "pair-server" in got:
            pair = got["pair-server"] + got["pair-client"]
            print(f"\nintercept ÷ (pair-server + pair-client) = {got['intercept']:,.0f} ÷ {pair:,.0f} = {got['intercept'] / pair:.2f}x")
    finally:
        procs.stop()
        common.cleanup(work)


def bare_pair(procs, work, tree, n):
    """Steady-state instructions per 1 KB keep-alive GET (c=16) of a hyper + rustls server
    (loadgen serve, counted from the load on, like modgate) and of a hyper + rustls client
    (loadgen run, counted whole: the difference of a 2n and an n run cancels its start-up
    and handshakes)."""
    certs = os.path.join(work, "pair-certs")
    subprocess.run([LOADGEN, "certs", "--dir", certs], check=True, capture_output=True)
    out = os.path.join(work, "pair.out")
    server = procs.start(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                          LOADGEN, "serve", "--dir", tree, "--cert", f"{certs}/cert.pem", "--key", f"{certs}/key.pem"])
    line = server.stdout.readline()
    while line and "127.0.0.1:" not in line:
        line = server.stdout.readline()
    port = int(line.strip().rsplit(":", 1)[1])
    common.drain(server)
    args = ["--url", f"https://localhost:{port}/small.bin", "--ca", f"{certs}/ca.pem", "--concurrency", "16"]

    def run(count, wrap=()):
        r = subprocess.run([*wrap, LOADGEN, "run", *args, "--requests", str(count)], capture_output=True, text=True)
        res = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        if res is None or res["errors"]:
            raise RuntimeError(f"loadgen pair: {r.stderr[-1000:]}")

    run(max(n // 10, 32))
    counts = []
    for count in (n, 2 * n):
        client_out = os.path.join(work, f"pair-client.{count}.out")
        for cmd in ("--instr=on", "--zero"):
            subprocess.run(["callgrind_control", cmd, str(server.pid)], check=True, capture_output=True)
        run(count, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={client_out}"])
        for cmd in ("--dump", "--instr=off"):
            subprocess.run(["callgrind_control", cmd, str(server.pid)], check=True, capture_output=True)
        dumps = sorted((f for f in os.listdir(work) if f.startswith("pair.out.")), key=lambda f: os.path.getmtime(os.path.join(work, f)))
        counts.append((total_ir(os.path.join(work, dumps[-1])), total_ir(client_out)))
    server_ir, client_ir = ((b - a) / n for a, b in zip(counts[0], counts[1]))
    log(f"pair: hyper + rustls server {server_ir:,.0f}, client {client_ir:,.0f} instructions per request (steady state)")
    return [("pair-server", server_ir, "request"), ("pair-client", client_ir, "request")]


def function_costs(dump):
    """Exclusive instructions per function of a callgrind dump (callgrind_annotate's table)."""
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", dump], capture_output=True, text=True).stdout
    costs = {}
    for line in ann.splitlines():
        m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in m.group(2) and "=>" not in m.group(2):
            fn = re.sub(r" \[[^]]*\]$", "", m.group(2))
            costs[fn] = costs.get(fn, 0) + int(m.group(1).replace(",", ""))
    return costs


def top_functions(dump_n, dump_2n, units):
    """Functions by steady-state cost per unit: the 2n run minus the n run."""
    a, b = function_costs(dump_n), function_costs(dump_2n)
    diff = {fn: (b.get(fn, 0) - a.get(fn, 0)) / units for fn in set(a) | set(b)}
    return sorted(diff.items(), key=lambda kv: -kv[1])


if __name__ == "__main__":
    main()
