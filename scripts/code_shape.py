"""The longest functions and modules of a tree, for keeping edgekit readable (issue #18).

    python scripts/code_shape.py [[NAME=]TREE ...] [--json results/code_shape.json] [--top 10]

e.g. `now=. before=/tmp/before` (a worktree of an older commit). For each TREE (default: this checkout) it counts the lines of every module under edgekit/
(generated protobuf modules left out) and of every function and method (from its `def` to
its last line, docstring included) and writes the longest of each as JSON.
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shape(tree: Path, top: int) -> dict:
    modules, functions = [], []
    for path in sorted((tree / "edgekit").rglob("*.py")):
        if "protos" in path.parts:
            continue
        text = path.read_text()
        name = str(path.relative_to(tree))
        modules.append({"module": name, "lines": len(text.splitlines())})
        parents: dict[ast.AST, str] = {}
        for node in ast.walk(ast.parse(text)):
            for child in ast.iter_child_nodes(node):
                if isinstance(node, ast.ClassDef):
                    parents[child] = node.name
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualified = f"{parents[node]}.{node.name}" if node in parents else node.name
                functions.append({"function": f"{name}:{qualified}", "lines": node.end_lineno - node.lineno + 1})
    modules.sort(key=lambda m: -m["lines"])
    functions.sort(key=lambda f: -f["lines"])
    return {"modules": modules[:top], "functions": functions[:top],
            "functions_over_60_lines": sum(f["lines"] > 60 for f in functions),
            "total_lines": sum(m["lines"] for m in modules), "module_count": len(modules)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(ROOT)])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    named = [tree.split("=", 1) if "=" in tree else (tree, tree) for tree in args.trees]
    result = {name: shape(Path(tree), args.top) for name, tree in named}
    text = json.dumps(result, indent=2) + "\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
