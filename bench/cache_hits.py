#!/usr/bin/env python3
"""Cache-hit benchmark (issue: module-aware routing, item 8).

Serves a small .mod/.info and a 50 MB module zip from a TLS file server on loopback (the "direct"
limit), puts modgate in front of it (as proxy.golang.org, via upstream.overrides), warms the
cache, then measures with the same load client:
  - small files, keep-alive, concurrency 16, HTTP/1.1 and h2: requests/s, p50, p99;
  - the 50 MB zip, one at a time: MB/s.
Each measurement is the median of --repeat runs. Prints a Markdown table with ratios.

Usage: python3 bench/cache_hits.py [--seconds 5] [--repeat 3]
"""

import argparse
import os
import subprocess

from common import LOADGEN, Procs, build, cleanup, gateway_for, median_run, peak_rss_mib, start_file_server, tmpdir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--zip-mb", type=int, default=50)
    a = ap.parse_args()
    build()
    work = tmpdir("modgate-bench-")
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        v = os.path.join(tree, "example.com/m/@v")
        os.makedirs(v)
        with open(os.path.join(v, "v1.0.0.mod"), "w") as f:
            f.write("module example.com/m\n\ngo 1.19\n\nrequire (\n" + "".join(f"\texample.com/dep{i} v1.{i}.0\n" for i in range(40)) + ")\n")
        with open(os.path.join(v, "v1.0.0.info"), "w") as f:
            f.write('{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}')
        zdir = os.path.join(tree, "example.com/big/@v")
        os.makedirs(zdir)
        subprocess.run([LOADGEN, "mkzip", "--module", "example.com/big", "--version", "v1.0.0", "--size", str(a.zip_mb << 20), "--out", os.path.join(zdir, "v1.0.0.zip")], check=True)

        up_addr, certs = start_file_server(procs, work, tree)
        mg, proxy, admin, gw_ca = gateway_for(procs, work, up_addr, certs)

        small = ["/example.com/m/@v/v1.0.0.mod", "/example.com/m/@v/v1.0.0.info"]
        zipu = "/example.com/big/@v/v1.0.0.zip"
        # Warm the cache.
        for p in small + [zipu]:
            subprocess.run(["curl", "-sS", "-o", "/dev/null", "--fail", "--proxy", f"http://{proxy}", "--cacert", gw_ca, f"https://proxy.golang.org{p}"], check=True)

        rows = []
        for h2 in (False, True):
            proto = "h2" if h2 else "HTTP/1.1"
            common = ["--concurrency", "16", "--duration", f"{a.seconds}s"] + (["--h2"] if h2 else [])
            direct = median_run([*sum((["--url", f"https://{up_addr}{p}"] for p in small), []), "--ca", f"{certs}/ca.pem", *common], a.repeat)
            gw = median_run([*sum((["--url", f"https://proxy.golang.org{p}"] for p in small), []), "--proxy", proxy, "--ca", gw_ca, *common], a.repeat)
            rows.append((f"cache hit, .mod/.info, c=16, {proto}", "req/s", direct, gw, "rps"))
        zcommon = ["--concurrency", "1", "--duration", f"{a.seconds * 2}s"]
        direct = median_run(["--url", f"https://{up_addr}{zipu}", "--ca", f"{certs}/ca.pem", *zcommon], a.repeat)
        gw = median_run(["--url", f"https://proxy.golang.org{zipu}", "--proxy", proxy, "--ca", gw_ca, *zcommon], a.repeat)
        rows.append((f"cache hit, {a.zip_mb} MB zip, c=1, HTTP/1.1", "MB/s", direct, gw, "mb_per_s"))

        print(f"| scenario | unit | direct (no proxy) | modgate | ratio | direct p50/p99 ms | modgate p50/p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for name, unit, d, g, k in rows:
            print(f"| {name} | {unit} | {d[k]} | {g[k]} | {g[k] / d[k]:.2f}x | {d['p50_ms']}/{d['p99_ms']} | {g['p50_ms']}/{g['p99_ms']} |")
            assert d["errors"] == 0 and g["errors"] == 0, (d, g)
        print(f"\nmodgate peak RSS: {peak_rss_mib(mg.pid):.1f} MiB")
    finally:
        procs.stop()
        cleanup(work)


if __name__ == "__main__":
    main()
