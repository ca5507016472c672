#!/usr/bin/env python3
"""What checksum-database verification at fill costs: a cold `go build` of the bench module
graph (bench/gomodtree.py) through a fresh modgate, with `sumdb.verify` on (against the Go
checksum-database fixture, tests/fixtures/sumdb, built with x/mod, which holds every module
before the builds start, as the public database does) and off, interleaved
(on/off, then off/on, ...). The agent runs with GOSUMDB=off, as agents in restricted networks do,
so the proof is modgate's alone. Prints the median build time and modgate's CPU per build for
each, and their ratios.

With --zip-mb N, also the zip path alone: one cold fetch of an N MB module zip through a fresh
modgate (cache fill, content checks, and with verification the h1 hash and the proof, whose last
chunk waits for both), verify on and off interleaved: median MB/s and modgate CPU per GB.

    cargo build --release -p modgate -p loadgen
    python3 bench/verify_cost.py --modules 60 --rounds 4
    python3 bench/verify_cost.py --modules 1 --rounds 6 --zip-mb 200
"""

import argparse
import os
import shutil
import statistics
import ssl
import subprocess
import time
import urllib.request

import common
import gomodtree
from common import LOADGEN, MODGATE, Procs

GO = "/usr/lib/go-1.19/bin/go"


def build_fixture(work):
    out = os.path.join(work, "sumdb-fixture")
    src = os.path.join(common.ROOT, "tests", "fixtures", "sumdb", "main.go")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOCACHE=os.path.join(work, "gocache-fixture"), GOFLAGS="", HOME=work)
    subprocess.run([GO, "build", "-o", out, src], check=True, env=env)
    return out


def go_env(work, gopath, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO") and k.lower() not in ("https_proxy", "http_proxy", "no_proxy", "ssl_cert_file")}
    env.update({
        "HOME": work, "GOPATH": gopath, "GOMODCACHE": os.path.join(gopath, "pkg", "mod"),
        "GOCACHE": os.path.join(work, "gocache"), "GOFLAGS": "-mod=mod", "GOSUMDB": "off",
        "GONOSUMDB": "", "GOPRIVATE": "", "CGO_ENABLED": "0", "PATH": os.path.dirname(GO) + ":" + env.get("PATH", ""),
    })
    env.update(kw)
    return env


def go_build(work, tag, env_kw):
    d = os.path.join(work, "go", tag)
    shutil.copytree(os.path.join(work, "app"), d)
    gopath = os.path.join(d, "gopath")
    t0 = time.time()
    out = subprocess.run([GO, "build", "-o", os.path.join(d, "app.bin"), "."], cwd=d, env=go_env(work, gopath, **env_kw), capture_output=True, text=True)
    secs = time.time() - t0
    if out.returncode != 0:
        raise RuntimeError(f"go build ({tag}) failed:\n{out.stderr[-3000:]}")
    subprocess.run(["chmod", "-R", "u+w", gopath])
    shutil.rmtree(d, ignore_errors=True)
    return secs


def gateway(p, work, name, mode, certs, up, sdb_addr, vkey):
    verify = f'keys = ["{vkey}"]' if mode == "on" else 'verify = "off"'
    return common.start_modgate(p, work, name, f"""
[sumdb]
{verify}
[upstream]
extra_ca_file = "{certs}/ca.pem"
[upstream.overrides]
"proxy.golang.org" = "https://{up}"
"sum.golang.org" = "https://{sdb_addr}"
""")


def zip_path(a, work, certs, up, sdb_addr, vkey, big):
    size = os.path.getsize(os.path.join(work, "tree", big, "@v", "v1.0.0.zip"))
    mbps = {"on": [], "off": []}
    cpu = {"on": [], "off": []}
    for r in range(a.rounds):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            p = Procs()
            try:
                mg, proxy, _admin, ca = gateway(p, work, f"zip-{mode}-{r}", mode, certs, up, sdb_addr, vkey)
                before = common.cpu_seconds(mg.pid)
                out = subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", "-x", f"http://{proxy}", "--cacert", ca,
                                      f"https://proxy.golang.org/{big}/@v/v1.0.0.zip"], capture_output=True, text=True, check=True)
                secs, got = out.stdout.split()
                assert int(got) == size, (got, size)
                mbps[mode].append(size / 1e6 / float(secs))
                cpu[mode].append((common.cpu_seconds(mg.pid) - before) / (size / 1e9))
            finally:
                p.stop()
                # Each round's 200 MB cache entry goes, so dirty pages do not pile up.
                shutil.rmtree(os.path.join(work, f"zip-{mode}-{r}-data"), ignore_errors=True)
                subprocess.run(["sync"])
    print(f"zip path: cold fetch of one {size / 1e6:.0f} MB zip through a fresh modgate (fill, checks, hash, proof), {a.rounds} rounds interleaved")
    for mode in ("off", "on"):
        print(f"  verify {mode:<3}  {statistics.median(mbps[mode]):7.1f} MB/s  (runs {[round(x) for x in mbps[mode]]})"
              f"   modgate CPU {statistics.median(cpu[mode]):5.2f} s/GB  (runs {[round(c, 2) for c in cpu[mode]]})")
    print(f"  on / off: throughput {statistics.median(mbps['on']) / statistics.median(mbps['off']):.3f}x, "
          f"CPU per GB {statistics.median(cpu['on']) / statistics.median(cpu['off']):.3f}x")
    pair = lambda xs: statistics.median(on / off for on, off in zip(xs["on"], xs["off"]))
    print(f"  on / off, median of the per-round ratios: throughput {pair(mbps):.3f}x, CPU per GB {pair(cpu):.3f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modules", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--zip-mb", type=int, default=0, help="also time cold fetches of one zip this large")
    a = ap.parse_args()
    work = common.tmpdir("modgate-verify-")
    procs = Procs()
    try:
        tree = os.path.join(work, "tree")
        gomodtree.make_tree(tree, a.modules)
        gomodtree.make_app(os.path.join(work, "app"), a.modules)
        big = "example.com/bigzip"
        if a.zip_mb:
            v = os.path.join(tree, big, "@v")
            os.makedirs(v)
            subprocess.run([LOADGEN, "mkzip", "--module", big, "--version", "v1.0.0", "--size", str(a.zip_mb << 20), "--out", os.path.join(v, "v1.0.0.zip")], check=True)
            with open(os.path.join(v, "v1.0.0.mod"), "w") as f:
                f.write(f"module {big}\n")
        up, certs = common.start_file_server(procs, work, tree)
        fixture = build_fixture(work)
        sdb = procs.start([fixture, "-goproxy", tree, "-cert", f"{certs}/cert.pem", "-key", f"{certs}/key.pem"])
        vkey, sdb_addr = sdb.stdout.readline().split()
        # The database already holds every module (as sum.golang.org holds published ones):
        # look each up once, so that its tree does not grow during the timed builds.
        ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
        for i in range(a.modules):
            url = f"https://{sdb_addr}/lookup/{gomodtree.module_path(i)}@{gomodtree.VERSION}"
            urllib.request.urlopen(url, context=ctx, timeout=30).read()
        if a.zip_mb:
            urllib.request.urlopen(f"https://{sdb_addr}/lookup/{big}@v1.0.0", context=ctx, timeout=300).read()
            zip_path(a, work, certs, up, sdb_addr, vkey, big)
            if a.modules <= 1:
                return
        go_build(work, "warmup", {"GOPROXY": "file://" + tree})
        times = {"on": [], "off": []}
        cpu = {"on": [], "off": []}
        for r in range(a.rounds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                p = Procs()
                try:
                    mg, proxy, _admin, ca = gateway(p, work, f"mg-{mode}-{r}", mode, certs, up, sdb_addr, vkey)
                    before = common.cpu_seconds(mg.pid)
                    secs = go_build(work, f"{mode}-{r}", {"GOPROXY": "https://proxy.golang.org", "HTTPS_PROXY": f"http://{proxy}", "SSL_CERT_FILE": ca})
                    times[mode].append(secs)
                    cpu[mode].append(common.cpu_seconds(mg.pid) - before)
                finally:
                    p.stop()
        zips = gomodtree.zip_bytes(tree, a.modules) / 1e6
        print(f"cold go build, {a.modules} modules ({zips:.1f} MB of zips), empty GOMODCACHE, agent GOSUMDB=off, {a.rounds} rounds interleaved")
        for mode in ("off", "on"):
            print(f"  verify {mode:<3}  {statistics.median(times[mode]):6.2f} s  (runs {[round(t, 2) for t in times[mode]]})"
                  f"   modgate CPU {statistics.median(cpu[mode]):6.3f} s  (runs {[round(c, 3) for c in cpu[mode]]})")
        print(f"  on / off: build time {statistics.median(times['on']) / statistics.median(times['off']):.3f}x, "
              f"modgate CPU {statistics.median(cpu['on']) / statistics.median(cpu['off']):.3f}x")
    finally:
        procs.stop()
        common.cleanup(work)


if __name__ == "__main__":
    main()
