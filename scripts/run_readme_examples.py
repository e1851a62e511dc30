"""Run the README's examples as a newcomer would, so a README that drifts from the code fails CI.

    python scripts/run_readme_examples.py [--readme README.md] [--list]

Runs, in order and from the repository root:
1. the first shell block's command 1 (set up, convert the sample model), as written;
2. every fenced block marked by an `<!-- example -->` line just before it: `bash` blocks with
   `bash -euo pipefail`, `python` blocks with the project's `.venv/bin/python`.
Each must exit 0 within its time limit. Then every relative link in the README and in docs/
must name a file that exists (anchors are left to `mkdocs build --strict`).
Prints each block with its outcome and time; exits 1 on the first failure.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"```(\w+)\n(.*?)\n```", re.S)
MARK = "<!-- example -->"
TIMEOUT_SECONDS = 900


def blocks(readme: str) -> list[tuple[str, str, str]]:
    """(label, language, code) for the quick-start command 1 and every marked example."""
    found = []
    first = FENCE.search(readme)
    command_1 = next(line for line in first.group(2).splitlines() if line.startswith("python3 -m venv"))
    found.append(("quick start, command 1", "bash", command_1))
    for match in FENCE.finditer(readme):
        before = readme[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == MARK:
            heading = next((line for line in reversed(before) if line.startswith(("**", "#"))), "example")
            found.append((heading.strip("*# ").split("**")[0][:60], match.group(1), match.group(2)))
    return found


def run(language: str, code: str) -> subprocess.CompletedProcess:
    if language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", code]
    elif language == "python":
        command = [str(ROOT / ".venv" / "bin" / "python"), "-c", code]
    else:
        raise SystemExit(f"an example in {language!r}: only bash and python blocks can be marked")
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)


def broken_links() -> list[str]:
    """Relative links (Markdown `[text](target)`) in README.md and docs/ that name no file."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if not path or re.match(r"[a-z]+:", path):
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    return broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--list", action="store_true", help="only list the blocks that would run")
    args = parser.parse_args()
    found = blocks(args.readme.read_text())
    for number, (label, language, code) in enumerate(found, 1):
        print(f"[{number}/{len(found)}] {label} ({language}, {len(code.splitlines())} lines)", flush=True)
        if args.list:
            continue
        started = time.perf_counter()
        result = run(language, code)
        seconds = time.perf_counter() - started
        print(result.stdout[-2000:], end="")
        if result.returncode != 0:
            print(result.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"README example {number} ({label}) failed with exit {result.returncode}")
        print(f"    ok in {seconds:.1f} s", flush=True)
    broken = broken_links()
    if broken:
        raise SystemExit("links that name no file:\n  " + "\n  ".join(broken))
    print(f"{len(found)} README blocks ran; every relative link in README.md and docs/ resolves")


if __name__ == "__main__":
    main()
