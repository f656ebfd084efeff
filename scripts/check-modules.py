#!/usr/bin/env python3
"""Checks that the modules of a crate depend on each other in one direction.

For every crate given, reads each `.rs` file under its `src/`, collects the `crate::a::b`
paths it uses (outside comments) and the `super::` paths, and reduces each to an edge between
two sibling modules (the first modules where the two paths differ; a module using its own
parent or child is not an edge). Fails, naming the modules, if any module uses one that uses it
back (directly or around a longer cycle).

Usage: scripts/check-modules.py crates/server crates/layer
"""

import re
import sys
from pathlib import Path

USE = re.compile(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)")
SUPER = re.compile(r"\b((?:super::)+)([a-z_][a-z0-9_]*)")


def module_path(src: Path, file: Path) -> tuple[str, ...]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def code_lines(text: str):
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        yield line.split("//")[0] if "\"" not in line else line


def edges(src: Path):
    modules = {module_path(src, f) for f in src.rglob("*.rs")}
    for file in sorted(src.rglob("*.rs")):
        here = module_path(src, file)
        for line in code_lines(file.read_text()):
            targets = []
            for m in USE.finditer(line):
                targets.append(tuple(m.group(1).strip(":").split("::")))
            for m in SUPER.finditer(line):
                ups = m.group(1).count("super::")
                # A file's own module is `here`; `super` is its parent.
                base = here[: len(here) - ups]
                targets.append(base + (m.group(2),))
            for target in targets:
                # The longest prefix that is a module of this crate.
                while target and target not in modules:
                    target = target[:-1]
                common = 0
                while (
                    common < min(len(here), len(target))
                    and here[common] == target[common]
                ):
                    common += 1
                if common == len(here) or common == len(target):
                    continue  # itself, a parent or a child
                yield here[: common + 1], target[: common + 1], file


def find_cycle(graph: dict):
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def main() -> int:
    failed = False
    for crate in sys.argv[1:]:
        src = Path(crate) / "src"
        graph: dict = {}
        where: dict = {}
        for a, b, file in edges(src):
            graph.setdefault(a, set()).add(b)
            where.setdefault((a, b), file)
        cycle = find_cycle(graph)
        if cycle:
            failed = True
            names = " -> ".join("::".join(m) for m in cycle)
            print(f"check-modules: {crate}: modules import each other: {names}", file=sys.stderr)
            for a, b in zip(cycle, cycle[1:]):
                print(f"  {'::'.join(a)} uses {'::'.join(b)} in {where[(a, b)]}", file=sys.stderr)
        else:
            print(f"check-modules: {crate}: {len(graph)} modules, dependencies in one direction")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
