#!/usr/bin/env python3
"""Validates deploy/: every YAML and JSON file parses; every metric the Prometheus rules and the
Grafana dashboard use is one the binary exports (names given in a file, one per line); the rules
pass `promtool check rules` and their unit tests (`promtool test rules`); the systemd unit passes `systemd-analyze verify`.

Usage: validate.py METRIC_NAMES_FILE MODGATE_BINARY
Exits non-zero on the first problem; a missing tool is a problem, not a skip.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def check_kubernetes(binary):
    """The manifest passes the Kubernetes schema (kubernetes-validate, strict) and holds what
    makes it run: its config compiles, the drain fits in the grace period, the config is
    mounted as a directory (so updates reach it), probes use /readyz and /healthz, the CA key
    reaches modgate with mode 0600 through an init container, and the agents' Service has no
    admin port."""
    problems = []
    path = os.path.join(HERE, "kubernetes", "modgate.yaml")
    tool = shutil.which("kubernetes-validate")
    if not tool:
        problems.append("kubernetes-validate is not installed (pip install kubernetes-validate)")
    else:
        out = subprocess.run([tool, "--strict", "--quiet", path], capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"kubernetes-validate: {out.stdout}{out.stderr}")
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(open(path))}
    config = docs["ConfigMap/modgate-config"]["data"]["modgate.toml"]
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "modgate.toml")
        open(cfg, "w").write(config)
        env = dict(os.environ, CORP_GIT_TOKEN="x", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
        out = subprocess.run([binary, "config", "check", cfg], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            problems.append(f"{path}: the ConfigMap's modgate.toml: {out.stderr.strip()}")
    drain = re.search(r'drain_timeout = "([^"]+)"', config)
    drain = duration_seconds(drain.group(1)) if drain else 30
    pod = docs["Deployment/modgate"]["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= drain:
        problems.append(f"{path}: terminationGracePeriodSeconds {grace} is not above proxy.drain_timeout {drain}s")
    main = next(c for c in pod["containers"] if c["name"] == "modgate")
    if main["image"].endswith(":latest") or ":" not in main["image"]:
        problems.append(f"{path}: image {main['image']!r} names no version")
    for m in main["volumeMounts"]:
        if m["name"] == "config" and "subPath" in m:
            problems.append(f"{path}: the config is mounted with subPath, so ConfigMap updates never reach it")
    if main["readinessProbe"]["httpGet"]["path"] != "/readyz" or main["livenessProbe"]["httpGet"]["path"] != "/healthz":
        problems.append(f"{path}: probes must use /readyz (readiness) and /healthz (liveness)")
    ca_dir = re.search(r'\[ca\]\s*dir = "([^"]+)"', config).group(1)
    ca_mount = next((m for m in main["volumeMounts"] if m["mountPath"] == ca_dir), None)
    ca_volume = next((v for v in pod["volumes"] if ca_mount and v["name"] == ca_mount["name"]), {})
    if "secret" in ca_volume:
        problems.append(f"{path}: the CA is mounted straight from a Secret; with fsGroup its key is 0440 and modgate refuses it")
    inits = " ".join(" ".join(c.get("command", [])) for c in pod.get("initContainers", []))
    if "-m 0600" not in inits or "ca-key.pem" not in inits:
        problems.append(f"{path}: no init container installs ca-key.pem with mode 0600")
    if "fsGroup" in pod.get("securityContext", {}):
        problems.append(f"{path}: fsGroup makes Secret files group-readable")
    agents = docs["Service/modgate"]["spec"]["ports"]
    if any(p.get("targetPort") == "admin" or p.get("port") == 9090 for p in agents):
        problems.append(f"{path}: the agents' Service exposes the admin port")
    if "Service/modgate-admin" not in docs:
        problems.append(f"{path}: no Service of its own for the admin port")
    return problems


def check_compose():
    """Compose publishes modgate's ports on explicit addresses only, and the build context
    leaves out build output, git history and CA keys."""
    problems = []
    path = os.path.join(HERE, "docker-compose.yml")
    compose = yaml.safe_load(open(path))
    for service, spec in compose["services"].items():
        for port in spec.get("ports", []):
            if str(port).count(":") < 2:
                problems.append(f"{path}: {service} publishes {port!r} on every interface; name the address")
    ignore = os.path.join(HERE, "..", ".dockerignore")
    if not os.path.exists(ignore):
        problems.append(".dockerignore is missing: the build context would hold target/ and CA keys")
    else:
        lines = set(open(ignore).read().split())
        for need in ("target/", ".git/", "**/ca-key.pem"):
            if need not in lines:
                problems.append(f".dockerignore does not leave out {need}")
    return problems


def main():
    names = set(open(sys.argv[1]).read().split())
    binary = sys.argv[2]
    problems = []
    exprs = []
    for root, _, files in os.walk(HERE):
        for f in files:
            p = os.path.join(root, f)
            if f.endswith((".yml", ".yaml")):
                docs = list(yaml.safe_load_all(open(p)))
                if p.endswith("rules.yml"):
                    for g in docs[0]["groups"]:
                        exprs += [r["expr"] for r in g["rules"]]
                if f == "modgate.yaml":
                    kinds = {d["kind"] for d in docs}
                    need = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}
                    if not need <= kinds:
                        problems.append(f"{p}: missing {need - kinds}")
            elif f.endswith(".json"):
                d = json.load(open(p))
                for panel in d["panels"]:
                    if panel["type"] != "row":
                        exprs += [t["expr"] for t in panel["targets"]]
                        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
                            problems.append(f"{p}: panel {panel['title']!r} has no unit")
                        if any(not t.get("legendFormat") for t in panel["targets"]):
                            problems.append(f"{p}: panel {panel['title']!r} has a query without a legend")
                names_of_vars = {v["name"] for v in d.get("templating", {}).get("list", [])}
                if not {"job", "instance"} <= names_of_vars:
                    problems.append(f"{p}: the dashboard needs job and instance variables")
    used = set()
    for e in exprs:
        for m in re.findall(r"\bmodgate_[a-z0-9_]+", e):
            base = re.sub(r"_(bucket|count|sum)$", "", m)
            used.add(base)
            if base not in names:
                problems.append(f"metric {m} is not exported by modgate")
    if len(used) < 10:
        problems.append(f"only {len(used)} metrics used; expected the dashboard to cover more")
    problems += check_kubernetes(binary)
    problems += check_compose()
    # The example container configuration is valid for the binary.
    out = subprocess.run([binary, "config", "check", os.path.join(HERE, "modgate.container.toml")], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"modgate.container.toml: {out.stderr.strip()}")
    promtool = shutil.which("promtool")
    if not promtool:
        problems.append("promtool is not installed (Debian package prometheus)")
    else:
        out = subprocess.run([promtool, "check", "rules", os.path.join(HERE, "prometheus", "rules.yml")], capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"promtool: {out.stdout}{out.stderr}")
        # The alerts' unit tests: each fires on what it is for, not on its false positives.
        out = subprocess.run([promtool, "test", "rules", "rules.test.yml"], cwd=os.path.join(HERE, "prometheus"), capture_output=True, text=True)
        if out.returncode != 0 or "SUCCESS" not in out.stdout:
            problems.append(f"promtool test rules: {out.stdout}{out.stderr}")
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        problems.append("systemd-analyze is not installed (Debian package systemd)")
    else:
        with tempfile.TemporaryDirectory() as d:
            # verify needs the ExecStart binary to exist at its path: use a copy of the unit that
            # points at the built binary.
            unit = open(os.path.join(HERE, "systemd", "modgate.service")).read()
            unit = unit.replace("/usr/local/bin/modgate", os.path.abspath(binary))
            path = os.path.join(d, "modgate.service")
            open(path, "w").write(unit)
            out = subprocess.run([analyze, "verify", path], capture_output=True, text=True)
            errors = [l for l in (out.stdout + out.stderr).splitlines() if "modgate.service" in l]
            if out.returncode != 0 or errors:
                problems.append("systemd-analyze: " + "\n".join(errors or [out.stderr]))
    for p in problems:
        print("problem:", p)
    print(f"checked {len(exprs)} expressions using {len(used)} metrics")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
