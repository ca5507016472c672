"""A synthetic Go module tree for the go-command scenario of bench/peers.py.

`make_tree(root, n)` writes a GOPROXY directory layout (`<module>/@v/list`, `.info`, `.mod`,
`.zip`) of `n` modules example.com/peers/mNN v1.0.0 under `root`, with real module zips (the
`module@version/` prefix, go.mod, Go sources, LICENSE, a filler data file so zips range from a
few KB to ~1 MB; ~20 MB for 60 modules). Module i imports and requires module (i-1)//2, so the graph has depth
log2(n). `make_app(dir, n)` writes a main module that requires and imports all of them.
"""

import json
import os
import random
import zipfile

PREFIX = "example.com/peers"
VERSION = "v1.0.0"
TIME = "2024-01-02T03:04:05Z"


def module_path(i):
    return f"{PREFIX}/m{i:02d}"


def _go_mod(i):
    text = f"module {module_path(i)}\n\ngo 1.19\n"
    if i > 0:
        text += f"\nrequire {module_path((i - 1) // 2)} {VERSION}\n"
    return text


def _sources(i, rng):
    pkg = f"m{i:02d}"
    if i > 0:
        dep = (i - 1) // 2
        main = f'package {pkg}\n\nimport dep "{module_path(dep)}"\n\n// Value depends on the module this one requires.\nfunc Value() int {{ return {i} + dep.Value() + len(Data) % 7 }}\n'
    else:
        main = f"package {pkg}\n\n// Value is the root of the graph.\nfunc Value() int {{ return len(Data) % 7 }}\n"
    # Filler like generated tables in real modules (hex, so about half compresses away); sizes
    # vary by module, from 4 KB to 2 MB of source.
    size = rng.choice([4, 16, 64, 128, 256, 512, 1024, 2048]) * 1024
    filler = rng.randbytes(size // 2).hex()
    data = f"package {pkg}\n\n// Data is filler that gives the zip a realistic size.\nconst Data = \"{filler}\"\n"
    test = f"package {pkg}\n\nimport \"testing\"\n\nfunc TestValue(t *testing.T) {{\n\tif Value() < 0 {{\n\t\tt.Fatal(\"negative\")\n\t}}\n}}\n"
    return {f"{pkg}.go": main, "data.go": data, f"{pkg}_test.go": test, "LICENSE": "Public domain, for benchmarks.\n", "README.md": f"# {pkg}\n"}


def make_tree(root, n):
    rng = random.Random(42)
    for i in range(n):
        mod = module_path(i)
        v = os.path.join(root, mod, "@v")
        os.makedirs(v, exist_ok=True)
        with open(os.path.join(v, "list"), "w") as f:
            f.write(VERSION + "\n")
        with open(os.path.join(v, f"{VERSION}.info"), "w") as f:
            json.dump({"Version": VERSION, "Time": TIME}, f)
        with open(os.path.join(v, f"{VERSION}.mod"), "w") as f:
            f.write(_go_mod(i))
        with zipfile.ZipFile(os.path.join(v, f"{VERSION}.zip"), "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{mod}@{VERSION}/go.mod", _go_mod(i))
            for name, body in _sources(i, rng).items():
                z.writestr(f"{mod}@{VERSION}/{name}", body)


def make_app(d, n):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "go.mod"), "w") as f:
        f.write("module example.com/peers/app\n\ngo 1.19\n\nrequire (\n")
        f.writelines(f"\t{module_path(i)} {VERSION}\n" for i in range(n))
        f.write(")\n")
    with open(os.path.join(d, "main.go"), "w") as f:
        f.write("package main\n\nimport (\n\t\"fmt\"\n\n")
        f.writelines(f'\tm{i:02d} "{module_path(i)}"\n' for i in range(n))
        f.write(")\n\nfunc main() {\n\tsum := 0\n")
        f.writelines(f"\tsum += m{i:02d}.Value()\n" for i in range(n))
        f.write("\tfmt.Println(sum)\n}\n")


def zip_bytes(root, n):
    """Total size of the n module zips."""
    return sum(os.path.getsize(os.path.join(root, module_path(i), "@v", f"{VERSION}.zip")) for i in range(n))
