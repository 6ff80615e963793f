"""docker/Dockerfile, statically (no Docker engine in CI): base, torch build args, non-root
user, entrypoint, and that what it copies and exposes matches the repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from boardlens.services.config import EvaluatorConfig, ProducerConfig, TrainerConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def _all(instructions, op: str) -> list[str]:
    return [a for o, a in instructions if o == op]


def test_base_and_entrypoint(instructions):
    assert _all(instructions, "FROM") == ["python:3.11-slim"]
    assert json.loads(_all(instructions, "ENTRYPOINT")[-1]) == ["boardlens"]
    user = _all(instructions, "USER")[-1].split(":")[0]
    assert user not in ("root", "0")


def test_torch_is_swappable(instructions):
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in _all(instructions, "ARG")}
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    assert "torch" in args["TORCH_SPEC"]
    runs = _all(instructions, "RUN")
    torch_run = next(r for r in runs if "TORCH_SPEC" in r)
    assert '--index-url "${TORCH_INDEX}"' in torch_run
    # torch before the project, so pip keeps the chosen build instead of resolving its own
    assert runs.index(torch_run) < next(i for i, r in enumerate(runs) if "pip install -e ." in r)


def test_copied_paths_exist(instructions):
    for args in _all(instructions, "COPY"):
        *sources, _ = args.split()
        for src in sources:
            if "[" in src:  # optional file (glob)
                continue
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    assert any(a.startswith("models/") for a in _all(instructions, "COPY"))


def test_exposes_the_default_ports(instructions):
    exposed = {int(p) for a in _all(instructions, "EXPOSE") for p in a.split()}
    p, t, e = ProducerConfig(), TrainerConfig(), EvaluatorConfig()
    wanted = {int(x.rsplit(":", 1)[1]) for x in (p.bind, p.bind_lossy, t.snapshot_bind)}
    wanted |= {p.metrics_port, t.metrics_port, e.metrics_port}
    assert wanted <= exposed
