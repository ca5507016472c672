#!/usr/bin/env python3
"""Fails when a module of the modgate crate imports one above it in the request's path.

The layers, top to bottom; a module may use those below it and its own folder, never one above
(which is also what makes the graph acyclic). Reads `crate::NAME` paths in src/ (code, not
comments). Two modules of one layer may not use each other either. Run from the repository
root.
"""
import pathlib
import re
import sys

LAYERS = [
    ["main", "lib", "cli"],
    ["gateway"],
    ["ingress"],
    ["serve"],
    ["egress", "store"],
    ["tls"],
    ["telemetry"],
    ["config", "body"],
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
USE = re.compile(r"\bcrate::([a-z_]+)")


def top(path: pathlib.Path) -> str:
    rel = path.relative_to("src")
    return rel.parts[0].removesuffix(".rs")


def main() -> int:
    bad = []
    for path in sorted(pathlib.Path("src").rglob("*.rs")):
        me = top(path)
        if me not in RANK:
            bad.append(f"{path}: top-level module {me!r} is in no layer of .ci/layers.py")
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            for used in USE.findall(code):
                if used == me or used not in RANK or me in ("main", "lib"):
                    continue
                if RANK[used] <= RANK[me]:
                    bad.append(f"{path}:{n}: {me} uses crate::{used}, which is not below it")
    core = pathlib.Path("crates/modgate-core/Cargo.toml").read_text()
    deps = core.split("[dependencies]", 1)[1].split("[", 1)[0]
    for crate in ("tokio", "hyper", "rustls", "tokio-rustls", "hyper-util", "object_store", "tempfile"):
        if re.search(rf"^{re.escape(crate)}\s*=", deps, re.M):
            bad.append(f"crates/modgate-core/Cargo.toml: the pure core must not depend on {crate}")
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
