#!/usr/bin/env python3
"""Private-module benchmark (issue: private modules, item 6).

A repository of --files files (--mb MB in total) tagged v1.0.0 sits on an HTTPS git server that
requires credentials (bench/git_server.py, git http-backend). In the same run we time, each the
median of --repeat runs with a fresh GOMODCACHE:

  direct  the go command itself (GOPRIVATE set, credentials in its git config), reaching the git
          host through a modgate that only forwards bytes for that host;
  cold    proxy mode through modgate with an empty modgate data directory (mirror clone, zip
          build, cache fill), agent without GOPRIVATE or credentials;
  warm    the same again with modgate's cache warm;
  file    GOPROXY=file:// of the module cache the warm run produced (the local-disk limit).

Usage: python3 bench/private_fetch.py [--files 3000] [--mb 50] [--repeat 3]
"""

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import time

from common import LOADGEN, Procs, build, cleanup, start_modgate, tmpdir

HERE = os.path.dirname(os.path.abspath(__file__))
GO = "/usr/lib/go-1.19/bin/go"
USER, PASSWORD = "bench", "bench-secret"
MODULE = "git.corp.example/team/big"


def git(args, cwd, env=None):
    e = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=cwd, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x",
             GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@x")
    e.update(env or {})
    subprocess.run(["git"] + args, cwd=cwd, env=e, check=True, capture_output=True)


def make_repo(work, files, mb):
    src = os.path.join(work, "src")
    os.makedirs(src)
    git(["init", "-q", "-b", "main"], src)
    with open(os.path.join(src, "go.mod"), "w") as f:
        f.write(f"module {MODULE}\n\ngo 1.19\n")
    per = (mb << 20) // files
    for i in range(files):
        d = os.path.join(src, f"pkg{i % 50:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.go"), "w") as f:
            f.write(f"package pkg{i % 50:02d}\n\n// ")
            f.write(base64.b64encode(os.urandom(per * 3 // 4)).decode())
            f.write("\n")
    git(["add", "-A"], src)
    git(["commit", "-q", "-m", "big"], src)
    git(["tag", "v1.0.0"], src)
    repos = os.path.join(work, "repos")
    os.makedirs(os.path.join(repos, "team"))
    git(["clone", "-q", "--bare", src, os.path.join(repos, "team", "big")], work)
    return repos


def go_download(home, env):
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    e = {"PATH": os.environ["PATH"], "HOME": home, "GOPATH": f"{home}/gopath", "GOMODCACHE": f"{home}/modcache",
         "GOCACHE": f"{home}/gocache", "GOFLAGS": "-modcacherw", "GIT_CONFIG_NOSYSTEM": "1"}
    e.update(env)
    t0 = time.perf_counter()
    out = subprocess.run([GO, "mod", "download", "-json", f"{MODULE}@v1.0.0"], cwd=home, env=e, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    return took, out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    build()
    work = tmpdir("modgate-private-bench-")
    procs = Procs()
    try:
        repos = make_repo(work, a.files, a.mb)
        certs = os.path.join(work, "certs")
        subprocess.run([LOADGEN, "certs", "--dir", certs], check=True)
        srv = procs.start(["python3", os.path.join(HERE, "git_server.py"), "--root", repos, "--cert", f"{certs}/cert.pem",
                           "--key", f"{certs}/key.pem", "--user", USER, "--password", PASSWORD])
        git_addr = srv.stdout.readline().strip()
        pwfile = os.path.join(work, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD)
        _, fwd_proxy, _, fwd_ca = start_modgate(procs, work, "forward", f"""
[intercept]
hosts = ["git.corp.example"]
[upstream]
extra_ca_file = "{certs}/ca.pem"
[upstream.overrides]
"git.corp.example" = "https://{git_addr}"
""")
        auth = "Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        direct_env = {"GOPRIVATE": "git.corp.example", "HTTPS_PROXY": f"http://{fwd_proxy}", "SSL_CERT_FILE": fwd_ca,
                      "GIT_SSL_CAINFO": fwd_ca, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                      "GIT_CONFIG_VALUE_0": auth}
        private_cfg = f"""
[upstream]
extra_ca_file = "{certs}/ca.pem"
[upstream.overrides]
"git.internal" = "https://{git_addr}"
[[private.routes]]
module = "git.corp.example/{{group}}/{{repo}}"
git = "https://git.internal/{{group}}/{{repo}}"
username = "{USER}"
password_file = "{pwfile}"
"""
        direct, cold, warm, file_ = [], [], [], []
        sums = set()
        for r in range(a.repeat):
            t, out = go_download(f"{work}/home-direct", direct_env)
            direct.append(t)
            sums.add([l for l in out.splitlines() if '"Sum"' in l][0])
            # cold: a fresh modgate every time
            shutil.rmtree(f"{work}/private-data", ignore_errors=True)
            mg, proxy, _, ca = start_modgate(procs, work, "private", private_cfg)
            env = {"GONOSUMDB": "git.corp.example", "HTTPS_PROXY": f"http://{proxy}", "SSL_CERT_FILE": ca}
            t, out = go_download(f"{work}/home-cold", env)
            cold.append(t)
            sums.add([l for l in out.splitlines() if '"Sum"' in l][0])
            t, out = go_download(f"{work}/home-warm", env)
            warm.append(t)
            mg.terminate()
            mg.wait()
            cache = f"{work}/home-warm/modcache/cache/download"
            t, out = go_download(f"{work}/home-file", {"GOPROXY": f"file://{cache}", "GONOSUMDB": "git.corp.example"})
            file_.append(t)
        assert len(sums) == 1, sums
        med = {k: statistics.median(v) for k, v in [("direct", direct), ("cold", cold), ("warm", warm), ("file", file_)]}
        print(f"repository: {a.files} files, {a.mb} MB; go.sum {sums.pop().strip()}")
        print("| fetch | median seconds | ratio to direct | runs |")
        print("|---|---|---|---|")
        for k, label in [("direct", "go command direct from git (through a forwarding modgate)"),
                         ("cold", "modgate proxy mode, cold (mirror + zip build)"),
                         ("warm", "modgate proxy mode, warm (cache hit)"),
                         ("file", "GOPROXY=file:// (local disk limit)")]:
            runs = {"direct": direct, "cold": cold, "warm": warm, "file": file_}[k]
            print(f"| {label} | {med[k]:.2f} | {med[k] / med['direct']:.2f}x | {', '.join(f'{x:.2f}' for x in runs)} |")
    finally:
        procs.stop()
        cleanup(work)


if __name__ == "__main__":
    main()
