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
