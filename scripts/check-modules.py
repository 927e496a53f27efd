#!/usr/bin/env python3
"""Fails if modules within a host crate import each other in a cycle.

Crates cannot form cycles (cargo refuses them); modules inside a crate can, and a
cycle there hides a layering that is only stated in prose. The graph has one node
per top-level module of a crate (plus the crate root, which depends on all of
them): a file of module `a` that names `crate::b` (or, at the top level,
`super::b`) depends on `b`; naming an item of the root itself (`crate::Thing`)
depends on the root, and so is always a cycle. Comments are ignored.
"""
import os, re, sys, glob

CRATES = os.environ.get("EBB_CHECK_CRATES", "").split() or ["host/core/src", "host/store-kv/src", "host/store-postgres/src", "host/runtime/src", "host/engine/src", "host/ebb/src"]


def modules(root):
    names = set()
    for entry in os.listdir(root):
        if entry.endswith(".rs") and entry not in ("lib.rs", "main.rs"):
            names.add(entry[:-3])
        elif os.path.isdir(os.path.join(root, entry)):
            names.add(entry)
    return names


def graph(root):
    mods = modules(root)
    edges = {"<root>": set(mods)}
    for path in glob.glob(root + "/**/*.rs", recursive=True):
        rel = os.path.relpath(path, root).split(os.sep)
        if rel[0] in ("lib.rs", "main.rs"):
            continue
        mod = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
        # Unit tests may use anything; they are not part of the layering.
        if rel[-1] == "tests.rs" and len(rel) > 1:
            continue
        text = re.sub(r"//[^\n]*", "", open(path).read())
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)[0]
        refs = re.findall(r"\bcrate::(\w+)", text)
        if len(rel) == 1:
            refs += re.findall(r"\bsuper::(\w+)", text)
        for name in refs:
            target = name if name in mods else "<root>"
            if target != mod:
                edges.setdefault(mod, set()).add(target)
    return edges


def cycle(edges):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


failed = False
for root in CRATES:
    found = cycle(graph(root))
    if found:
        failed = True
        print(f"{root}: module cycle: {' -> '.join(found)}", file=sys.stderr)
sys.exit(1 if failed else 0)
