"""CI: run README.md's "Python API" example, as a user would paste it, with the installed deploy-unet.

    python .ci/readme_example.py README.md      # from an empty folder: the example writes files there

Every ```python block of the "## Python API" section runs, in order, in one namespace. No such section: say
so and pass (the section is optional). The section without a python block, or a block that raises: fail,
with the block's own traceback (its lines are numbered as in README.md).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HEADING = "## Python API"


def main(readme: Path) -> int:
    text = readme.read_text()
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == HEADING), None)
    if start is None:
        print(f"{readme} has no '{HEADING}' section: no example to run")
        return 0
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"#{1,2} ", lines[i])), len(lines))
    blocks, code, first = [], None, 0
    for i in range(start + 1, end):
        fence = lines[i].strip()
        if code is None and fence == "```python":
            code, first = [], i + 1
        elif code is not None and fence == "```":
            blocks.append((first, "".join(code)))
            code = None
        elif code is not None:
            code.append(lines[i])
    if not blocks:
        print(f"error: {readme}'s '{HEADING}' section has no ```python block to run", file=sys.stderr)
        return 1
    namespace = {"__name__": "__main__"}
    for first, source in blocks:
        # pad with blank lines so a traceback names the README's own line numbers
        exec(compile("\n" * first + source, str(readme), "exec"), namespace)
    print(f"ran {len(blocks)} python block(s) of {readme}'s '{HEADING}' section "
          f"({sum(s.count(chr(10)) for _, s in blocks)} lines)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python .ci/readme_example.py README.md")
    sys.exit(main(Path(sys.argv[1])))
