"""`boardlens describe`: every latent of saved SAEs described by the board and scored FADE-style.

    boardlens describe runs/r1 --model models/othello-gpt --games 1000

Plays `games` fresh games per split, runs the model to the SAEs' layer, and for each SAE (and,
as references, the block's MLP neurons and an untrained random SAE of the same size) gives
every alive latent its best BSP with clarity, responsiveness, purity and, for a sample of the
latents that pass FADE's gate, faithfulness (`boardlens.interpret`). References: the per-BSP
linear probes as latents (the ceiling, and an oracle whose latents are the BSP detectors), the
block's MLP neurons, an untrained random SAE. Prints the per-family
summary and each SAE's top latents; writes everything as JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path

from boardlens.atomic import write_json
from boardlens.interpret.report import (
    format_summary,
    interpret,
    mlp_subject,
    probe_subject,
    random_subject,
    sae_subject,
    top_latents,
)
from boardlens.metrics.evalset import model_evalset
from boardlens.registry import GAMES
from boardlens.services.score import model_and_saes

log = logging.getLogger("boardlens")


def format_top(record: dict, n: int = 10) -> str:
    lines = [f"top {n} latents of {record['name']} by description F1:"]
    for r in top_latents(record, n):
        faith = r.get("faithfulness", {}).get("score")
        lines.append(f"  {r['latent']:>6}  {r['description']:<32} F1 {r['f1']:.3f}  clarity {r['clarity'] or 0:.3f}  "
                     f"resp {r['responsiveness'] or 0:.3f}  purity {r['purity'] or 0:.3f}"
                     + (f"  faithfulness {faith:.3f}" if faith is not None else ""))
    return "\n".join(lines)


def run(paths: list[str], model_path: str, games: int = 1000, layer: int | None = None, seed: int = 12_345,
        json_out: str | None = None, references: bool = True, faithful_latents: int = 32,
        prefixes: int = 50) -> dict:
    model, game, layer, found = model_and_saes(paths, model_path, layer)
    log.info("describe config %s", {"model": str(model_path), "game": game, "layer": layer, "games": games,
                                    "seed": seed, "saes": [s.name for s in found], "references": references,
                                    "faithful_latents": faithful_latents, "prefixes": prefixes})
    es = model_evalset(model, game, layer, games, games, seed, GAMES[game].default_batch_games, workers=0)
    subjects = [sae_subject(s.name, s.ae, es, layer) for s in found]
    if references:
        subjects.append(probe_subject(es, layer))
        subjects.append(mlp_subject(model, es, layer))
        for d_sae in sorted({s.ae.d_sae for s in found}):
            subjects.append(random_subject(es, layer, d_sae))
    records = []
    for sub in subjects:
        records.append(interpret(sub, es, model, game, faithful_latents, prefixes, seed))
        log.info("described %s in %.1f s", sub.name, records[-1]["seconds"]["total"])
    result = {"model": str(model_path), "game": game, "layer": layer, "games": games, "seed": seed,
              "subjects": {r["name"]: r for r in records}}
    print(format_summary(records), flush=True)
    if records and "unavailable" in records[0]["faithfulness"]:
        print(f"faithfulness: not scored ({records[0]['faithfulness']['unavailable']})", flush=True)
    for r in records[: len(found)]:
        print(format_top(r), flush=True)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, result)
    return result
