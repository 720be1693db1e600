#!/usr/bin/env python3
"""Checks every vLLM name ProfileMate reads against real vLLM source trees.

    check.py MANIFEST.json TREE [TREE ...]

MANIFEST.json is what `profilemate vllm-names` prints; each TREE is an unpacked vLLM wheel
(a directory holding `vllm/` and `vllm-X.Y.Z.dist-info/`). Python's `ast` indexes every
module: classes (bases, class-level names, dataclass fields, every `self.X` assigned in a
method, methods and properties) and every function by its CPython qualname (`<locals>`
included). Then:
  - functions with required "all" must exist in every tree, "any" in at least one;
  - attributes must exist on the class (or a base class found by name);
  - enum members must have the value the manifest assumes (`enum.auto()` counts from 1).
Prints each missing name with the release it is missing from; exit status 1 if any is.
"""

import ast
import json
import os
import sys


def version_of(tree):
    for name in sorted(os.listdir(tree)):
        if name.startswith("vllm-") and name.endswith(".dist-info"):
            with open(os.path.join(tree, name, "METADATA"), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version: "):
                        return line.split(":", 1)[1].strip()
    return os.path.basename(tree.rstrip("/"))


class ModuleIndex(ast.NodeVisitor):
    """Qualnames and class members of one module."""

    def __init__(self):
        self.qualnames = set()
        self.classes = {}  # name -> {"bases": [...], "members": set()}
        self.stack = []  # (kind, name)

    def _qualname(self, name):
        parts = []
        for kind, n in self.stack:
            parts.append(n)
            if kind == "function":
                parts.append("<locals>")
        return ".".join(parts + [name])

    def _enclosing_class(self):
        # The class whose method we are in (`self.X` belongs to it).
        for kind, name in reversed(self.stack):
            if kind == "class":
                return self.classes.get(name)
        return None

    def visit_ClassDef(self, node):
        bases = []
        for b in node.bases:
            if isinstance(b, ast.Name):
                bases.append(b.id)
            elif isinstance(b, ast.Attribute):
                bases.append(b.attr)
        members = set()
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                members.add(item.target.id)
            elif isinstance(item, ast.Assign):
                members.update(t.id for t in item.targets if isinstance(t, ast.Name))
            elif isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                members.add(item.name)
        self.classes[node.name] = {"bases": bases, "members": members, "body": node.body}
        self.stack.append(("class", node.name))
        self.generic_visit(node)
        self.stack.pop()

    def _function(self, node):
        self.qualnames.add(self._qualname(node.name))
        self.stack.append(("function", node.name))
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _self_targets(self, targets):
        cls = self._enclosing_class()
        if cls is None:
            return
        for t in targets:
            for node in ast.walk(t):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    cls["members"].add(node.attr)

    def visit_Assign(self, node):
        self._self_targets(node.targets)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._self_targets([node.target])
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._self_targets([node.target])
        self.generic_visit(node)


def index_tree(tree):
    modules = {}
    root = os.path.join(tree, "vllm")
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, tree).replace(os.sep, "/")
            try:
                with open(path, encoding="utf-8") as f:
                    mod = ast.parse(f.read(), filename=rel)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            idx = ModuleIndex()
            idx.visit(mod)
            modules[rel] = idx
    return modules


def file_matches(rel, pattern):
    if pattern == "*":
        return True
    segs = rel.split("/")[::-1]
    pats = pattern.split("/")[::-1]
    return len(segs) >= len(pats) and all(p == "*" or p == s for p, s in zip(pats, segs))


def qualname_matches(q, pattern, matching):
    if matching == "suffix":
        return q.endswith(pattern)
    if pattern.startswith("*."):
        head, _, last = q.rpartition(".")
        return bool(head) and last == pattern[2:]
    return q == pattern


def has_function(modules, f):
    for rel, idx in modules.items():
        if not file_matches(rel, f["file"]):
            continue
        if any(qualname_matches(q, f["qualname"], f["matching"]) for q in idx.qualnames):
            return True
    return False


def class_members(modules, module, cls, seen=None):
    """Members of `cls` defined in `module`, with those of its bases (found by name)."""
    seen = seen if seen is not None else set()
    out = set()
    candidates = [(rel, idx) for rel, idx in modules.items() if file_matches(rel, module)]
    if not candidates or (module, cls) in seen:
        return out
    seen.add((module, cls))
    for rel, idx in candidates:
        info = idx.classes.get(cls)
        if info is None:
            continue
        out |= info["members"]
        for base in info["bases"]:
            out |= base_members(modules, base, seen)
    return out


def base_members(modules, base, seen):
    out = set()
    for rel, idx in modules.items():
        if base in idx.classes and (rel, base) not in seen:
            out |= class_members(modules, rel, base, seen)
    return out


def enum_value(modules, module, cls, member):
    for rel, idx in modules.items():
        info = idx.classes.get(cls) if file_matches(rel, module) else None
        if info is None:
            continue
        auto = 0
        for item in info["body"]:
            if not isinstance(item, ast.Assign) or len(item.targets) != 1:
                continue
            target = item.targets[0]
            if not isinstance(target, ast.Name):
                continue
            value = item.value
            if isinstance(value, ast.Call) and getattr(value.func, "attr", getattr(value.func, "id", "")) == "auto":
                auto += 1
                current = auto
            elif isinstance(value, ast.Constant) and isinstance(value.value, int):
                current = auto = value.value
            else:
                continue
            if target.id == member:
                return current
    return None


def check(manifest, trees):
    failures = []
    indexed = [(version_of(t), index_tree(t)) for t in trees]
    for f in manifest["functions"]:
        where = [v for v, mods in indexed if has_function(mods, f)]
        name = f"{f['table']}: {f['file']} {f['qualname']}"
        if f["required"] == "all":
            failures += [f"{name} not found in vLLM {v}" for v, _ in indexed if v not in where]
        elif not where:
            failures.append(f"{name} not found in any of vLLM {', '.join(v for v, _ in indexed)}")
    for a in manifest["attributes"]:
        for v, mods in indexed:
            if a["attr"] not in class_members(mods, a["module"], a["class"]):
                failures.append(f"attribute {a['class']}.{a['attr']} ({a['module']}) not found in vLLM {v}")
    for e in manifest["enums"]:
        for v, mods in indexed:
            got = enum_value(mods, e["module"], e["class"], e["member"])
            if got != e["value"]:
                failures.append(
                    f"enum {e['class']}.{e['member']} is {got} in vLLM {v}, the bundle assumes {e['value']}"
                )
    return [v for v, _ in indexed], failures


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        manifest = json.load(f)
    versions, failures = check(manifest, sys.argv[2:])
    n = len(manifest["functions"]) + len(manifest["attributes"]) + len(manifest["enums"])
    for line in failures:
        print(f"MISSING {line}")
    print(
        f"vLLM names of bundle {manifest['bundle']}: {n} names checked against {', '.join(versions)}: "
        f"{len(failures)} missing"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
