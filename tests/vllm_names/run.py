#!/usr/bin/env python3
"""Checks the vLLM names a ProfileMate build reads against real vLLM releases.

    run.py PROFILEMATE_BIN [VERSION ...]     (default: the range's ends, 0.26.0 and 0.33.0;
                                              VLLM_NAMES_VERSIONS="0.26.0 0.29.0 ..." also works)

For each release: `pip download vllm==X --no-deps --only-binary :all:` (~300 MB, a few
seconds on a fast link) into a cache directory (VLLM_NAMES_CACHE, default
target/vllm-names), unpacks only its `.py` files and its dist-info, deletes the wheel, and
runs check.py on `profilemate vllm-names`. A release that cannot be downloaded (no network)
is skipped with a message; a name missing from a release that was read fails the run.
"""

import os
import shutil
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VERSIONS = ["0.26.0", "0.33.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64"]


def download(version, cache):
    tree = os.path.join(cache, f"vllm-{version}")
    if os.path.isdir(os.path.join(tree, "vllm")):
        return tree, None
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", wheels, f"vllm=={version}"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    found = [w for w in os.listdir(wheels) if w.startswith(f"vllm-{version}-") and w.endswith(".whl")]
    if r.returncode != 0 or not found:
        return None, (r.stderr.strip().splitlines() or ["pip gave no output"])[-1]
    tmp = tree + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(os.path.join(wheels, found[0])) as z:
        for name in z.namelist():
            if (name.startswith("vllm/") and name.endswith(".py")) or ".dist-info/" in name:
                z.extract(name, tmp)
    os.rename(tmp, tree)
    os.remove(os.path.join(wheels, found[0]))
    return tree, None


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    # The checker itself first: it must find planted misses.
    subprocess.run([sys.executable, os.path.join(HERE, "test_check.py")], check=True)
    binary = sys.argv[1]
    versions = sys.argv[2:] or os.environ.get("VLLM_NAMES_VERSIONS", "").split() or DEFAULT_VERSIONS
    cache = os.environ.get("VLLM_NAMES_CACHE", os.path.join(HERE, "..", "..", "target", "vllm-names"))
    os.makedirs(cache, exist_ok=True)
    manifest = os.path.join(cache, "manifest.json")
    with open(manifest, "w", encoding="utf-8") as f:
        subprocess.run([binary, "vllm-names"], stdout=f, check=True)
    trees = []
    for v in versions:
        tree, why = download(v, cache)
        if tree is None:
            print(f"SKIP vLLM names check against {v}: cannot download its wheel ({why})")
        else:
            trees.append(tree)
    if not trees:
        print("SKIP vLLM names check: no release could be downloaded")
        return 0
    return subprocess.run([sys.executable, os.path.join(HERE, "check.py"), manifest, *trees]).returncode


if __name__ == "__main__":
    sys.exit(main())
