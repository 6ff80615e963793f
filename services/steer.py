"""`boardlens steer`: activation scaling on a BSP, for SAE latents and for raw model components.

    boardlens steer SAE --model models/othello-gpt --bsp "mine_theirs_empty E5=theirs"
    boardlens steer SAE --model models/othello-gpt --family mine_theirs_empty --max-bsps 8

For each BSP: pairs of natural test positions where it holds and the same boards edited so it
does not (`boardlens.interpret.steer`), one scalar per SAE latent and one per attention / MLP
output learnt to flip the model's preference from the moves only b allows to those only its
absence allows (--probes: also one per BSP probe, the oracle dictionary whose latent j
detects BSP j). Reports the held-out flip rate before and after, the KL on unaffected moves,
the scalars that moved and whether the moved latents' descriptions are b.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from boardlens.atomic import write_json
from boardlens.interpret.describe import BSPIndex, describe
from boardlens.interpret.interventions import ComponentSite, SAESite
from boardlens.interpret.report import no_board_edits, probe_subject, sae_subject, test_prefixes
from boardlens.interpret.steer import SteerConfig, draw_pairs, steer
from boardlens.metrics.evalset import model_evalset
from boardlens.registry import GAMES
from boardlens.services.score import model_and_sae

log = logging.getLogger("boardlens")


def choose_bsps(index: BSPIndex, bsp: str | None, family: str | None, max_bsps: int, boards,
                prevalence: torch.Tensor) -> list[int]:
    """The BSP columns to steer: the one named, or the most common of a board family."""
    names = {index.name(c): c for c in range(index.size)}
    if bsp:
        if bsp not in names:
            raise ValueError(f"unknown BSP {bsp!r}; names look like {next(iter(names))!r}")
        chosen = [names[bsp]]
    else:
        family = family or boards.editable[0]
        if family not in index.starts:
            raise ValueError(f"unknown family {family!r}; this game has {sorted(index.starts)}")
        start = index.starts[family]
        cols = torch.arange(start, start + index.families[family].num_bsps)
        chosen = cols[torch.argsort(prevalence[cols], descending=True)][:max_bsps].tolist()
    for c in chosen:
        fam, _ = index.locate(c)
        if fam.name not in boards.editable:
            raise ValueError(f"{index.name(c)} is not a board BSP: steering needs a board to edit "
                             f"({', '.join(boards.editable)})")
    return chosen


def _moved_report(result, names: list[str], target: str, top: int = 10) -> dict:
    moved = result.moved
    on_target = [j for j in moved if names[j] == target]
    return {"flip_before": result.flip_before, "flip_after": result.flip_after,
            "train_flip_after": result.train_flip_after, "kl": round(result.kl, 4), "moved": len(moved),
            "moved_described_as_target": len(on_target),
            "top_moved": [{"feature": j, "alpha": round(float(result.alpha[j]), 3), "description": names[j]}
                          for j in moved[:top]],
            "moved_alpha": {str(j): round(float(result.alpha[j]), 3) for j in moved},
            "train_pairs": result.train_pairs, "test_pairs": result.test_pairs}


def run(path: str, model_path: str, bsp: str | None = None, family: str | None = None, max_bsps: int = 4,
        games: int = 500, layer: int | None = None, seed: int = 12_345, json_out: str | None = None,
        components: bool = True, cfg: SteerConfig | None = None, probes: bool = False) -> dict:
    cfg = cfg or SteerConfig()
    model, game, layer, sae = model_and_sae(path, model_path, layer)
    boards = GAMES[game].board_editor()
    if boards is None:
        raise ValueError(no_board_edits(game))
    log.info("steer config %s", {"sae": sae.name, "model": str(model_path), "game": game, "layer": layer,
                                 "bsp": bsp, "family": family, "max_bsps": max_bsps, "games": games, "seed": seed,
                                 "components": components, "probes": probes, "steer": cfg.__dict__})
    es = model_evalset(model, game, layer, games, games, seed, GAMES[game].default_batch_games, workers=0)
    t = es.tensors()
    index = BSPIndex(GAMES[game], es.families)
    subject = sae_subject(sae.name, sae.ae, es, layer)
    desc = describe(subject.train, t["train"]["labels"])
    latent_names = [index.name(int(b)) if b >= 0 else "" for b in desc.bsp]
    lab_test = torch.cat(list(t["test"]["labels"].values()), 1)
    prefixes = test_prefixes(es)
    comp = ComponentSite(model)
    probe = probe_subject(es, layer) if probes else None  # the oracle: latent j detects BSP j
    results = []
    for col in choose_bsps(index, bsp, family, max_bsps, boards, lab_test.float().mean(0)):
        fam, i = index.locate(col)
        pool = [prefixes[r] for r in lab_test[:, col].nonzero().squeeze(1).tolist()]
        pairs = draw_pairs(boards, pool, fam, i, cfg.pairs, torch.Generator().manual_seed(cfg.seed))
        name = index.name(col)
        rec = {"bsp": name, "pairs": len(pairs),
               "described_latents": [j for j, n in enumerate(latent_names) if n == name]}
        if len(pairs) < 4:
            rec["skipped"] = "fewer than 4 pairs with moves that only one of the boards allows"
        else:
            t0 = time.perf_counter()
            rec["sae"] = _moved_report(steer(model, SAESite(sae.ae, layer, sae.name), boards, pairs, cfg), latent_names, name)
            rec["sae"]["seconds"] = round(time.perf_counter() - t0, 1)
            if probe is not None:
                t0 = time.perf_counter()
                names = [index.name(c) for c in range(index.size)]
                rec["linear_probe"] = _moved_report(steer(model, probe.site, boards, pairs, cfg), names, name)
                rec["linear_probe"]["seconds"] = round(time.perf_counter() - t0, 1)
            if components:
                t0 = time.perf_counter()
                rec["components"] = _moved_report(steer(model, comp, boards, pairs, cfg), comp.labels, name)
                rec["components"]["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(rec)
        print(format_result(rec), flush=True)
    out = {"model": str(model_path), "sae": sae.name, "game": game, "layer": layer, "games": games, "seed": seed,
           "config": cfg.__dict__, "results": results}
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, out)
    return out


def format_result(rec: dict) -> str:
    lines = [f"{rec['bsp']}: {rec['pairs']} pairs; latents described as it: {rec['described_latents'][:8]}"]
    if "skipped" in rec:
        return lines[0] + f" (skipped: {rec['skipped']})"
    for kind in ("sae", "linear_probe", "components"):
        if kind in rec:
            r = rec[kind]
            top = ", ".join(f"{m['feature']} x{m['alpha']:.2f} ({m['description']})" for m in r["top_moved"][:5])
            lines.append(f"  {kind:<10} held-out flip {r['flip_before']:.2f} -> {r['flip_after']:.2f}, "
                         f"KL {r['kl']:.3f} nats, {r['moved']} moved ({r['moved_described_as_target']} described "
                         f"as the BSP): {top}")
    return "\n".join(lines)
