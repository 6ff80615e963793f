"""`boardlens browse`: the static feature browser of one SAE (`boardlens.interpret.browse`).

    boardlens browse runs/r1/checkpoints/latest/standard-4096-0.05.safetensors \
        --model models/othello-gpt --out browser/ [--steering steering.json]

Describes the SAE's latents on fresh games (as `boardlens describe`, without references),
then writes index.html and a page per best-described latent. --steering adds the results of
`boardlens steer` for the same SAE to the pages of the latents it moved or that describe its BSP.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from boardlens.interpret.browse import write_browser
from boardlens.interpret.report import interpret, sae_subject, test_prefixes
from boardlens.metrics.evalset import model_evalset
from boardlens.registry import GAMES
from boardlens.services.score import model_and_sae

log = logging.getLogger("boardlens")


def steering_by_latent(path: str | None, sae_name: str) -> dict[int, dict]:
    """{latent: {bsp, flip_before, flip_after, kl, alpha}} from a `boardlens steer` JSON."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
        results = data["results"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a `boardlens steer` result ({e!r})") from e
    if data.get("sae") != sae_name:
        raise ValueError(f"{path} steered {data.get('sae')!r}, not {sae_name!r}")
    out = {}
    for r in results:
        if "sae" not in r:
            continue
        s = r["sae"]
        info = {"bsp": r["bsp"], "flip_before": s["flip_before"], "flip_after": s["flip_after"], "kl": s["kl"]}
        for j in r["described_latents"]:
            out.setdefault(j, {**info, "alpha": s["moved_alpha"].get(str(j), 1.0)})
        for j, a in s["moved_alpha"].items():
            out.setdefault(int(j), {**info, "alpha": a})
    return out


def run(path: str, model_path: str, out: str, games: int = 500, layer: int | None = None, seed: int = 12_345,
        pages: int = 200, faithful_latents: int = 16, steering: str | None = None) -> Path:
    model, game, layer, sae = model_and_sae(path, model_path, layer)
    steer = steering_by_latent(steering, sae.name)
    log.info("browse config %s", {"sae": sae.name, "model": str(model_path), "out": out, "games": games,
                                  "layer": layer, "seed": seed, "pages": pages, "steering": steering})
    es = model_evalset(model, game, layer, games, games, seed, GAMES[game].default_batch_games, workers=0)
    subject = sae_subject(sae.name, sae.ae, es, layer)
    record = interpret(subject, es, model, game, faithful_latents, seed=seed)
    info = {"model": str(model_path), "game": game, "layer": layer, "games": games, "seed": seed}
    board = es.tensors()["test"]["labels"][next(iter(es.families))]  # the first family: the board
    page = write_browser(out, record, info, subject.test, test_prefixes(es), game, es.families, board, pages,
                         steering=steer)
    print(page, flush=True)
    return page
