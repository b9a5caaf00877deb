"""Where a bench script's figures go, and the knob every script shares.

Figures go to bench/<name>.md, or to $PYCNI_BENCH_OUT/<name>.md when that is set: the CI
smoke run (tests/integration/test_bench_smoke.py) writes there, so a quick run never
overwrites the committed figures.
"""
from __future__ import annotations

import argparse
import os
import re

BENCH = os.path.dirname(os.path.abspath(__file__))


def target(name: str) -> str:
    """The file a run writes the figures of `name` to."""
    return os.path.join(os.environ.get("PYCNI_BENCH_OUT") or BENCH, f"{name}.md")


def write(name: str, text: str) -> str:
    """Write a whole figures file; returns its path."""
    path = target(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)
    return path


def write_section(name: str, section: str, body: str) -> str:
    """Replace the `<!-- section:begin -->`..`<!-- section:end -->` block of the figures file,
    leaving the prose around it; the text is the target's, else the committed bench/<name>.md
    (a first run into $PYCNI_BENCH_OUT starts from it). A missing block is appended."""
    path = target(name)
    template = path if os.path.exists(path) else os.path.join(BENCH, f"{name}.md")
    text = open(template).read() if os.path.exists(template) else ""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, count=1, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    return write(name, text)


def options(doc: str | None, runs: int) -> argparse.ArgumentParser:
    """An argument parser with the option every bench script has: `--runs N`, the measured
    rounds (fewer for a quick run)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=runs, metavar="N", help=f"measured rounds (default {runs})")
    return ap
