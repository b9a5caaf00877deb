"""Replace one generated section of bench/edgemesh.md, leaving the prose around it."""
from __future__ import annotations

import os
import re

MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edgemesh.md")


def write_section(name: str, body: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(MD).read() if os.path.exists(MD) else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(MD, "w") as f:
        f.write(text)
