"""Every bad file, given to every command that reads one, is one line naming it, exit 1.

A corpus of broken and malicious files (JSON of every wrong shape, truncated and forged
tensor files, pickles that would run code, absurd sizes) in each slot a command reads: an SAE
(ours, dictionary_learning, SAELens), a model (folder or file), a training state, a score file.
Each goes through the real CLI (click, in this process: no import per case) and must end with
exit status 1 and exactly one `Error:` line that names the file, with no traceback, nothing
logged with one, no advice to load it unsafely, and no code run (the marker file).
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from boardlens.registry import ARCHS
from boardlens.sae.io import sae_tensors, save_sae
from boardlens.services.cli import main
from boardlens.services.config import DEFAULT_MODEL
from tests.services.helpers import evil_pickle

pytestmark = pytest.mark.timeout(300)

MODEL = DEFAULT_MODEL + "-random"  # 8 x 256, built from its config on load
D = 256


def good_sae(folder: Path, name: str = "sae") -> Path:
    ae = ARCHS["relu"](D, 16)
    return save_sae(folder, name, ae, {"name": name, "step": 3, "game": "othello", "model": "m", "layer": 6})


def huge_header(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    return path


def ours(tmp: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Our SAE file pairs, one broken part each -> (the path a command is given, the name its error names)."""
    cases = {}

    def case(name: str, json_text: str | None = None, tensors=None, raw: bytes | None = None) -> None:
        folder = tmp / "ours" / name
        st = good_sae(folder)
        if json_text is not None:
            st.with_suffix(".json").write_text(json_text)
            cases[name] = (st, "sae.json")
        if tensors is not None:
            save_file(tensors, str(st))
            cases[name] = (st, "sae.safetensors")
        if raw is not None:
            st.write_bytes(raw)
            cases[name] = (st, "sae.safetensors")

    meta = json.loads(good_sae(tmp / "ours" / "template").with_suffix(".json").read_text())
    for label, text in {"json-invalid": "{not json", "json-list": "[1, 2]", "json-string": '"sae"', "json-null": "null",
                        "json-number": "1e999", "json-binary": "\udcff"}.items():
        case(label, json_text=text.encode("utf-8", "surrogateescape").decode("latin-1") if label == "json-binary" else text)
    for label, change in {"unknown-arch": {"arch": "x"}, "arch-not-string": {"arch": 7}, "layer-absurd": {"layer": 10**9},
                          "layer-string": {"layer": "six"}, "trainer-string": {"trainer": "x"},
                          "hyperparams-list": {"hyperparams": [1]}, "name-object": {"name": {"a": 1}},
                          "step-negative": {"step": -4}, "game-unknown": {"game": "go"},
                          "norm-scale-zero": {"norm_scale": 0}}.items():
        case(label, json_text=json.dumps({**meta, **change}))
    st = tmp / "ours" / "template" / "sae.safetensors"
    case("truncated", raw=st.read_bytes()[: len(st.read_bytes()) // 2])
    case("random-bytes", raw=os.urandom(4096))
    case("pickle", raw=evil_pickle(tmp / "evil.bin", marker).read_bytes())
    case("empty", raw=b"")
    case("wrong-shapes", tensors={**sae_tensors(ARCHS["relu"](D, 16)), "encoder.weight": torch.zeros(16, 5)})
    case("wrong-names", tensors={"x": torch.zeros(2, 2)})
    folder = tmp / "ours" / "huge-header"
    good_sae(folder)
    cases["huge-header"] = (huge_header(folder / "sae.safetensors"), "sae.safetensors")
    folder = tmp / "ours" / "no-json"
    good_sae(folder).with_suffix(".json").unlink()
    cases["no-json"] = (folder / "sae.safetensors", "sae.json")
    return cases


def others(tmp: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """dictionary_learning and SAELens folders with one broken file each."""
    from boardlens.sae.interop import export_sae

    cases = {}
    for fmt, files in {"dictionary_learning": ("config.json", "ae.pt"),
                       "saelens": ("cfg.json", "sae_weights.safetensors")}.items():
        cfg_name, weights = files
        for label, text in {"list": "[1]", "invalid": "{", "string": '"x"',
                            "trainer-string": '{"trainer": "x"}', "arch-number": '{"architecture": 5, "d_in": 3}',
                            "layer-absurd": json.dumps({"trainer": {"dict_class": "AutoEncoder", "layer": 10**9},
                                                        "hook_layer": 10**9})}.items():
            folder = export_sae(ARCHS["relu"](D, 16), fmt, tmp / fmt / label)
            (folder / cfg_name).write_text(text)
            cases[f"{fmt}-config-{label}"] = (folder, cfg_name)
        for label, write in {"pickle": lambda p: evil_pickle(p, marker), "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
                             "random": lambda p: p.write_bytes(os.urandom(2048)), "huge-header": huge_header}.items():
            folder = export_sae(ARCHS["relu"](D, 16), fmt, tmp / fmt / f"w-{label}")
            write(folder / weights)
            cases[f"{fmt}-weights-{label}"] = (folder, weights)
    return cases


def models(tmp: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """A model folder or file with one broken part."""
    cfg = json.loads((Path(MODEL) / "config.json").read_text())
    cases = {}
    for label, text in {"config-list": "[1]", "config-invalid": "{", "config-gpt-list": json.dumps({**cfg, "gpt": [1]}),
                        "config-layers-absurd": json.dumps({**cfg, "gpt": {**cfg["gpt"], "n_layer": 10**6}}),
                        "config-game-unknown": json.dumps({**cfg, "game": "go"})}.items():
        folder = tmp / "models" / label
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(text)
        cases[label] = (folder, "config.json")
    folder = tmp / "models" / "weights-truncated"
    folder.mkdir(parents=True)
    trained = {k: v for k, v in cfg.items() if k != "random_init_seed"}  # its weights come from the file
    (folder / "config.json").write_text(json.dumps(trained))
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    cases["weights-truncated"] = (folder, "model.safetensors")
    cases["pt-pickle"] = (evil_pickle(tmp / "models" / "evil.pt", marker), "evil.pt")
    (tmp / "models" / "random.pt").write_bytes(os.urandom(1000))
    cases["pt-random"] = (tmp / "models" / "random.pt", "random.pt")
    torch.save({"model": [1, 2]}, tmp / "models" / "nonsense.pt")
    cases["pt-nonsense"] = (tmp / "models" / "nonsense.pt", "nonsense.pt")
    (tmp / "models" / "config.json").write_text(json.dumps(cfg))
    cases["a-json-file"] = (tmp / "models" / "config.json", "config.json")
    cases["missing"] = (tmp / "models" / "nowhere", "nowhere")
    return cases


def lm_states(tmp: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Run folders whose train_state.pt is broken (for `lm train --resume`)."""
    cases = {}
    for label, write in {"pickle": lambda p: evil_pickle(p, marker), "random": lambda p: p.write_bytes(os.urandom(500)),
                         "empty": lambda p: p.write_bytes(b""),
                         "not-a-state": lambda p: torch.save({"model": torch.zeros(2)}, p),
                         "a-list": lambda p: torch.save([1, 2, 3], p)}.items():
        folder = tmp / "lm" / label
        folder.mkdir(parents=True)
        write(folder / "train_state.pt")
        cases[label] = (folder, "train_state.pt")
    return cases


def score_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    for label, text in {"list-of-numbers": "[1, 2]", "invalid": "[{", "object": '{"a": 1}',
                        "records-wrong": '[{"name": 5}]', "binary": None}.items():
        path = tmp / "scores" / f"{label}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            path.write_bytes(os.urandom(300))
        else:
            path.write_text(text)
        cases[label] = (path, f"{label}.json")
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    marker = tmp / "pwned"
    saes = {**ours(tmp, marker), **others(tmp, marker)}
    return {"saes": saes, "ours": ours(tmp / "again", marker), "models": models(tmp, marker),
            "lm": lm_states(tmp, marker), "scores": score_files(tmp), "marker": marker, "tmp": tmp}


def commands(corpus, command: str) -> list[tuple[str, list[str], Path, str]]:
    """(case id, argv, the bad file, the name its error must hold) for one command's file slots."""
    out = corpus["tmp"] / "out"
    sae = {
        "score": lambda p: ["score", str(p), "--model", MODEL, "--games", "4", "--no-references", "--json", str(out / "s.json")],
        "describe": lambda p: ["describe", str(p), "--model", MODEL, "--games", "4", "--no-references",
                               "--json", str(out / "d.json")],
        "steer": lambda p: ["steer", str(p), "--model", MODEL, "--games", "4", "--family", "mine_theirs_empty",
                            "--no-components", "--json", str(out / "st.json")],
        "browse": lambda p: ["browse", str(p), "--model", MODEL, "--games", "4", "--out", str(out / "browse")],
    }
    model = {
        "produce": lambda p: ["produce", "--model", str(p), "--metrics-port", "0", "--bind", "tcp://127.0.0.1:0",
                              "--bind-lossy", "tcp://127.0.0.1:0", "--max-tokens", "1"],  # a usable model ends
        "evaluate": lambda p: ["evaluate", "--model", str(p), "--metrics-port", "0", "--run-dir", str(out / "ev")],
        "score --model": lambda p: ["score", str(corpus["tmp"] / "ours" / "template"), "--model", str(p), "--games", "4",
                                    "--no-references", "--json", str(out / "s.json")],
        "lm train --init-from": lambda p: ["lm", "train", "--game", "othello", "--init-from", str(p), "--steps", "1",
                                           "--run-dir", str(out / "lm-init")],
    }
    if command in sae:
        slot, argv = corpus["saes"], sae[command]
    elif command in model:
        slot, argv = corpus["models"], model[command]
    elif command == "sae export":
        slot, argv = corpus["ours"], lambda p: ["sae", "export", str(p), "--format", "saelens", "--out", str(out / "x")]
    elif command == "lm train --resume":
        slot, argv = corpus["lm"], lambda p: ["lm", "train", "--game", "othello", "--run-dir", str(p), "--resume",
                                              "--steps", "1"]
    else:
        slot, argv = corpus["scores"], lambda p: ["report", str(p), "--out", str(out / "report")]
    return [(label, argv(p), p, name) for label, (p, name) in slot.items()]


COMMANDS = ("score", "describe", "steer", "browse", "sae export", "produce", "evaluate", "score --model",
            "lm train --init-from", "lm train --resume", "report")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_bad_file_is_one_line_naming_it(corpus, caplog, command):
    runner = CliRunner()
    failures = []
    cases = commands(corpus, command)
    for case, argv, _, name in cases:
        caplog.clear()
        r = runner.invoke(main, argv, catch_exceptions=True)
        out = r.output
        errors = [line for line in out.splitlines() if line.startswith("Error:")]
        problems = []
        if not isinstance(r.exception, SystemExit) or r.exit_code != 1:
            problems.append(f"exit {r.exit_code} ({type(r.exception).__name__}: {r.exception})")
        if len(errors) != 1:
            problems.append(f"{len(errors)} Error: lines")
        elif name not in errors[0]:
            problems.append(f"the error does not name {name}")
        if "Traceback" in out or "weights_only" in out or any(rec.exc_info for rec in caplog.records):
            problems.append("a traceback or unsafe advice")
        if problems:
            failures.append(f"{case}: {'; '.join(problems)}: {(errors or [out.strip()[-300:]])[0][:300]}")
    assert not corpus["marker"].exists(), "a pickle ran code"
    assert not failures, f"{command}: {len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def test_the_same_from_real_processes(corpus):
    """One case per command as a real `boardlens` process: the top-level error path is the same."""
    import subprocess
    import sys

    runs = []
    for command in COMMANDS:
        case, argv, _, name = commands(corpus, command)[-1]
        runs.append((command, case, name, subprocess.Popen(
            [sys.executable, "-m", "boardlens.services.cli", *argv], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)))
        while sum(p.poll() is None for *_, p in runs) >= 2:  # two at a time: 2 cores
            time.sleep(0.1)
    for command, case, name, p in runs:
        out = p.communicate(timeout=120)[0]
        errors = [line for line in out.splitlines() if line.startswith("Error:")]
        assert p.returncode == 1 and len(errors) == 1 and name in errors[0], (command, case, out[-2000:])
        assert "Traceback" not in out and "weights_only" not in out, (command, case, out[-2000:])
    assert not corpus["marker"].exists()
