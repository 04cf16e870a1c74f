"""The import graph of `bench/`, drawn: who imports whom, in layers (a unit sits above everything
it imports), imports that close a cycle in red. Function-level (lazy) imports count too: they
are dependencies all the same; imports under `if TYPE_CHECKING:` do not (annotations only).

    python scripts/import_graph.py docs/import_graph.png                 # packages and top modules
    python scripts/import_graph.py docs/modules.png --level module       # every module
    python scripts/import_graph.py old.png --root /path/to/other/checkout

Prints the edges and any cycle; exit code 0 either way (a picture, not a check).
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except what sits under `if TYPE_CHECKING:` (annotations only, never imported)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def unit(module: str, level: str, packages: set[str]) -> str:
    """bench.sweep.claims -> sweep (package level), or the module without `bench.` (module level)."""
    parts = module.split(".")[1:] or ["bench"]
    if level == "package" and parts[0] in packages:
        return parts[0]
    return ".".join(parts)


def imports(root: Path, level: str) -> dict[str, set[str]]:
    bench = root / "bench"
    packages = {p.name for p in bench.iterdir() if (p / "__init__.py").is_file()}
    modules = {module_name(root, p): p for p in bench.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        src = unit(name, level, packages)
        if src == "bench":
            continue  # bench/__init__.py: the package's docstring
        graph[src]  # every unit is a node, even one that imports nothing
        for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                # `from bench import perf` names a module; `from bench.data import augment` a name in one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t == "bench" or not t.startswith("bench."):
                    continue
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                dst = unit(t, level, packages)
                if dst != src:
                    graph[src].add(dst)
    return graph


def back_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Edges that close a cycle (depth-first search, nodes visited in name order)."""
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()

    def visit(n: str) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                back.add((n, m))
            elif m not in state:
                visit(m)
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return back


def layers(graph: dict[str, set[str]], back: set[tuple[str, str]]) -> dict[str, int]:
    """Longest path down to a unit that imports nothing, ignoring the edges that close cycles."""
    depth: dict[str, int] = {}

    def d(n: str) -> int:
        if n not in depth:
            depth[n] = 1 + max((d(m) for m in graph[n] if (n, m) not in back), default=-1)
        return depth[n]

    for n in graph:
        d(n)
    return depth


def draw(graph: dict[str, set[str]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    back = back_edges(graph)
    depth = layers(graph, back)
    rows: dict[int, list[str]] = defaultdict(list)
    for n in sorted(graph):
        rows[depth[n]].append(n)
    width = max(len(r) for r in rows.values())
    fig, ax = plt.subplots(figsize=(max(8.0, 1.9 * width), 1.3 * (len(rows) + 1)))
    pos = {}
    for y, names in rows.items():
        for i, n in enumerate(names):
            pos[n] = ((i + 0.5) * width / len(names), y)
    for n, deps in graph.items():
        for m in deps:
            red = (n, m) in back
            ax.annotate(
                "",
                xy=pos[m],
                xytext=pos[n],
                arrowprops={"arrowstyle": "-|>", "color": "#c0392b" if red else "#7f8c8d", "lw": 1.4 if red else 0.8,
                            "shrinkA": 14, "shrinkB": 14, "alpha": 0.9},
            )  # fmt: skip
    for n, (x, y) in pos.items():
        ax.text(x, y, n, ha="center", va="center", fontsize=9, bbox={"boxstyle": "round", "fc": "#eaf2f8", "ec": "#2c3e50"})
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-0.7, max(rows) + 0.7)
    ax.axis("off")
    n_edges = sum(len(v) for v in graph.values())
    ax.set_title(f"{title}: {len(graph)} units, {n_edges} imports, {len(back)} closing a cycle (red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="PNG file to write")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="a checkout (default: this one)")
    ap.add_argument("--level", choices=("package", "module"), default="package")
    ap.add_argument("--title", default="bench/ import graph")
    args = ap.parse_args()
    graph = imports(args.root, args.level)
    for n in sorted(graph):
        print(f"{n} -> {', '.join(sorted(graph[n])) or '(nothing)'}")
    for a, b in sorted(back_edges(graph)):
        print(f"cycle: {a} -> {b} closes a cycle")
    draw(graph, args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
