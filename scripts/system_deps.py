#!/usr/bin/env python3
"""The system tools `make test` needs: each installed from Debian only when its command is missing.

    python3 scripts/system_deps.py             # install what is missing (root, apt-get)
    python3 scripts/system_deps.py --plan      # print the Debian packages it would ask for
    python3 scripts/system_deps.py --simulate --assume-missing prometheus,promtool,stockfish,chromium,chromedriver
                                               # apt's own resolver, in simulation, on that set

A tool whose command is already on the machine is never asked for, whoever installed it. That
matters for npm: an image's own Node.js (NodeSource's, say) conflicts with Debian's `npm`
package, and apt then refuses the whole request. So with Node.js there and npm missing, npm is
asked for only if apt's resolver accepts it beside that Node.js; otherwise this script stops and
says so. Packages are installed one at a time, so a failure names its package,
with apt's reason, in one line. Standard library only: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import NamedTuple


class Tool(NamedTuple):
    commands: tuple[str, ...]  # all present = the tool is there
    package: str  # the Debian package that brings them
    why: str


TOOLS = (
    Tool(("prometheus", "promtool"), "prometheus", "the dashboard and alert-rule tests run a real Prometheus"),
    Tool(("stockfish",), "stockfish", "the chess self-play source (the tests skip it without one)"),
    Tool(("chromium",), "chromium", "the report and feature-browser pages are tested in headless Chromium"),
    Tool(("chromedriver",), "chromium-driver", "Selenium drives that Chromium"),
    Tool(("npm",), "npm", "installs Grafana's published dashboard schema (@grafana/schema)"),
)
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/games"])  # Debian puts stockfish in /usr/games


class DepsError(RuntimeError):
    """One line: what cannot be installed and why."""


def present(command: str, assume_missing: frozenset[str] = frozenset()) -> bool:
    return command not in assume_missing and shutil.which(command, path=SEARCH) is not None


def plan(assume_missing: frozenset[str] = frozenset()) -> list[str]:
    """The Debian packages to ask for: one per tool with a missing command; npm beside an
    installed Node.js only if apt accepts it there (Debian's npm conflicts with other builds)."""
    packages = []
    for tool in TOOLS:
        if all(present(c, assume_missing) for c in tool.commands):
            continue
        if tool.package == "npm" and present("node", assume_missing):
            try:
                simulate(["npm"])
            except DepsError as e:
                raise DepsError(f"npm is missing but Node.js is installed ({shutil.which('node', path=SEARCH)}), "
                                f"and {e}; install npm with that Node.js, then run make test again") from None
        packages.append(tool.package)
    return packages


def apt_reason(output: str) -> str:
    """apt's explanation in one line: its unmet-dependency lines and its E: lines."""
    lines = [ln.strip() for ln in output.splitlines()]
    keep = [ln for ln in lines if ln.startswith("E:") or " : " in ln]
    return "; ".join(keep or [ln for ln in lines if ln][-1:]) or "no output"


def apt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env)


def simulate(packages: list[str]) -> None:
    """apt-get install --simulate on the whole set at once (what a machine missing all of them
    would need to hold together); DepsError with apt's reason if the resolver refuses."""
    if not packages:
        return
    if not shutil.which("apt-get"):
        raise DepsError("apt-get not found: this check needs Debian's package manager")
    r = apt("install", "--simulate", "-q", *packages)
    if r.returncode != 0 and "Unable to locate package" in r.stdout + r.stderr:
        apt("update", "-qq")  # package lists never fetched on this machine
        r = apt("install", "--simulate", "-q", *packages)
    if r.returncode != 0:
        what = " ".join(packages) + (" together" if len(packages) > 1 else "")
        raise DepsError(f"apt cannot install {what}: {apt_reason(r.stdout + r.stderr)}")


def install(packages: list[str]) -> None:
    if not packages:
        return
    if not shutil.which("apt-get"):
        raise DepsError(f"missing {' '.join(packages)} and no apt-get to install them: install them by hand")
    r = apt("update", "-qq")
    if r.returncode != 0:
        raise DepsError(f"apt-get update failed: {apt_reason(r.stdout + r.stderr)}")
    for package in packages:
        print(f"system_deps: installing {package} from Debian", flush=True)
        r = apt("install", "-y", "-qq", package)
        if r.returncode != 0:
            raise DepsError(f"apt-get could not install {package}: {apt_reason(r.stdout + r.stderr)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", help="print the packages it would ask for, install nothing")
    mode.add_argument("--simulate", action="store_true", help="run apt's resolver in simulation on that set")
    ap.add_argument("--assume-missing", default="", metavar="CMD,...",
                    help="plan as if these commands were not installed (e.g. every tool's, for a fresh machine)")
    args = ap.parse_args(argv)
    missing = frozenset(c.strip() for c in args.assume_missing.split(",") if c.strip())
    try:
        packages = plan(missing)
        if args.plan:
            print(" ".join(packages))
        elif args.simulate:
            simulate(packages)
            print(f"system_deps: apt would install {' '.join(packages) or 'nothing'}")
        else:
            install(packages)
    except DepsError as e:
        print(f"system_deps: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
