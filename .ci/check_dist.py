"""CI: what `python -m build` made, checked against the tree. Run from the checkout:

    python .ci/check_dist.py dist/

The wheel: every module of deploy_unet/ (a subpackage missing from pyproject.toml's list is caught here), the
shipped checkpoints and cards of models/ under deploy_unet/models/, nothing else (no tests, benchmarks, caches),
each extra of pyproject.toml with the same requirements, the console script. The sdist: every tracked file but
CI's own (cpp/, CMakeLists.txt, models/train.py and the cards included), no caches. Prints both sizes.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_SDIST = (".ci/", ".gitignore")  # how CI runs, not what a source build needs


def one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    if len(found) != 1:
        sys.exit(f"error: expected one {pattern} in {dist}, found {[p.name for p in found]}")
    return found[0]


def is_junk(name: str) -> bool:
    return "__pycache__" in name or name.endswith((".pyc", ".pyo"))


def requirements(reqs) -> set[str]:
    """name + specifier, markers aside (the wheel adds `extra == ...` to each)."""
    return {f"{canonicalize_name(r.name)}{r.specifier}" for r in map(Requirement, reqs)}


def check_wheel(wheel: Path, project: dict) -> list[str]:
    problems = []
    names = set(zipfile.ZipFile(wheel).namelist())
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "deploy_unet").rglob("*.py") if not is_junk(str(p))}
    expected |= {f"deploy_unet/models/{p.name}" for p in (ROOT / "models").iterdir()
                 if p.suffix in (".py", ".pt", ".md")}
    for name in sorted(expected - names):
        problems.append(f"wheel lacks {name} (a new subpackage? list it in pyproject.toml [tool.setuptools] packages)")
    for name in sorted(names):
        if not name.startswith(("deploy_unet/", f"{dist_info}/")):
            problems.append(f"wheel carries {name}, outside the package (keep tests and benchmarks out)")
        elif is_junk(name):
            problems.append(f"wheel carries {name}")

    meta = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode())
    extras = set(meta.get_all("Provides-Extra") or [])
    for extra, reqs in project.get("optional-dependencies", {}).items():
        if extra not in extras:
            problems.append(f"wheel metadata has no extra [{extra}]")
            continue
        in_wheel = [r for r in meta.get_all("Requires-Dist") or [] if Requirement(r).marker
                    and Requirement(r).marker.evaluate({"extra": extra})]
        if requirements(in_wheel) != requirements(reqs):
            problems.append(f"extra [{extra}]: wheel requires {sorted(requirements(in_wheel))}, "
                            f"pyproject.toml {sorted(requirements(reqs))}")
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    for script, target in project.get("scripts", {}).items():
        if f"{script} = {target}" not in entry_points:
            problems.append(f"wheel lacks the console script {script} = {target}")
    return problems


def check_sdist(sdist: Path) -> list[str]:
    problems = []
    with tarfile.open(sdist) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name and m.isfile()}
    try:
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        print("note: no git checkout here; checking the sdist for the essentials only")
        tracked = ["CMakeLists.txt", "pyproject.toml", "README.md", "models/train.py"]
        tracked += [p.relative_to(ROOT).as_posix() for p in (ROOT / "cpp").rglob("*") if p.is_file()]
        tracked += [p.relative_to(ROOT).as_posix() for p in (ROOT / "models").glob("*.md")]
    for name in sorted(tracked):
        if not name.startswith(NOT_IN_SDIST) and name not in names:
            problems.append(f"sdist lacks {name} (add it to MANIFEST.in)")
    problems += [f"sdist carries {name}" for name in sorted(names) if is_junk(name)]
    return problems


def main(dist: Path) -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wheel, sdist = one(dist, "*.whl"), one(dist, "*.tar.gz")
    problems = check_wheel(wheel, project) + check_sdist(sdist)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    for path in (wheel, sdist):
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python .ci/check_dist.py DIST_DIR")
    sys.exit(main(Path(sys.argv[1])))
