"""One feature set's interpretation on one evaluation set: descriptions, the four FADE scores,
per-family summaries, as a JSON-ready record.

    rec = interpret(subject, evalset, model, game)    # subject: an SAE, the MLP neurons, ...

A `Subject` is what is being described: its name, its codes on both splits' labelled
positions and the `Site` to intervene on. Faithfulness runs on at most `faithful_latents`
latents drawn at random from those that pass FADE's gate (clarity and responsiveness >= 0.5)
and whose description is a BSP the game's board editor can edit (`Game.board_editor`); the
record says how many passed and how many were scored, or, for a game without board edits,
that faithfulness needs them.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch

from boardlens.interpret.describe import BSPIndex, describe
from boardlens.interpret.fade import fade_scores
from boardlens.interpret.faithfulness import FACTORS, draw_tasks, faithfulness
from boardlens.interpret.interventions import MLPSite, SAESite, Site
from boardlens.metrics.codes import Codes
from boardlens.metrics.evalset import EvalSet
from boardlens.metrics.references import identity, mlp_neurons, random_sae
from boardlens.registry import GAMES

GATE = 0.5  # FADE's gini_threshold: clarity and responsiveness both at least this


class Subject(NamedTuple):
    name: str
    kind: str  # sae, mlp_neurons, random_sae
    train: Codes  # codes of the train split's labelled positions
    test: Codes
    site: Site


def sae_subject(name: str, ae, evalset: EvalSet, layer: int, kind: str = "sae") -> Subject:
    t = evalset.tensors()
    ae = ae.float().eval()
    return Subject(name, kind, Codes(ae.encode, t["train"]["x"]), Codes(ae.encode, t["test"]["x"]),
                   SAESite(ae, layer, name))


def random_subject(evalset: EvalSet, layer: int, d_sae: int) -> Subject:
    return sae_subject(f"random_sae-{d_sae}", random_sae(evalset.width, d_sae), evalset, layer, "random_sae")


def mlp_subject(model, evalset: EvalSet, layer: int) -> Subject:
    t = evalset.recompute(mlp_neurons(model, layer))
    return Subject("mlp_neurons", "mlp_neurons", Codes(identity, t["train"]["x"]), Codes(identity, t["test"]["x"]),
                   MLPSite(model, layer))


class ProbeLatents(torch.nn.Module):
    """Per-BSP linear probes as an SAE-like module: latent j = relu(probe j's logit), and latent
    j's decoder column moves the residual along probe j's weight so that setting the latent to
    v sets that logit to v (the oracle: a dictionary whose latents are the BSP detectors)."""

    def __init__(self, probe) -> None:
        super().__init__()
        self.probe = probe
        w = probe.linear.weight / probe.std  # (B, d): d logit / d x
        self.register_buffer("directions", (w / w.pow(2).sum(1, keepdim=True).clamp_min(1e-12)).T.contiguous())
        self.d_in, self.d_sae = w.shape[1], w.shape[0]

    @property
    def decoder_weight(self) -> torch.Tensor:
        return self.directions  # (d, B)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe.logits(x).relu()


def probe_subject(evalset: EvalSet, layer: int) -> Subject:
    """The ceiling: one logistic probe per BSP (the evaluator's linear_probe), as latents."""
    from boardlens.metrics.references import fit_bsp_probe

    t = evalset.tensors()
    probe = fit_bsp_probe(t["train"]["x"], torch.cat(list(t["train"]["labels"].values()), 1))
    return sae_subject("linear_probe", ProbeLatents(probe), evalset, layer, "linear_probe")


def test_prefixes(evalset: EvalSet) -> list[torch.Tensor]:
    """Token prefix through each labelled position of the test split, in label-row order."""
    sp = evalset.splits["test"]
    return [tok[: int(p) + 1] for tok, pos in zip(sp.tokens, sp.positions, strict=True) for p in pos]


def _mean(v: torch.Tensor) -> float | None:
    v = v[~torch.isnan(v)]
    return round(float(v.mean()), 4) if v.numel() else None


def _frac(v: torch.Tensor, at: float = GATE) -> float | None:
    v = v[~torch.isnan(v)]
    return round(float((v >= at).float().mean()), 4) if v.numel() else None


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 4)


@torch.no_grad()
def interpret(subject: Subject, evalset: EvalSet, model, game: str, faithful_latents: int = 32,
              prefixes: int = 50, seed: int = 0) -> dict:
    """The record of one subject (see the module docstring); model may be None (no faithfulness)."""
    t0 = time.perf_counter()
    t = evalset.tensors()
    index = BSPIndex(GAMES[game], evalset.families)
    desc = describe(subject.train, t["train"]["labels"])
    lab_test = torch.cat(list(t["test"]["labels"].values()), 1)
    scores = fade_scores(subject.test, lab_test, desc, seed=seed)
    t_fade = time.perf_counter() - t0
    # faithfulness: gated latents with a board description, a random sample of them
    fams = index.family_of(desc.bsp)
    boards = GAMES[game].board_editor()
    editable = boards.editable if boards is not None else ()
    gated = [j for j in range(subject.test.width)
             if desc.bsp[j] >= 0 and fams[j] in editable
             and scores.clarity[j] >= GATE and scores.responsiveness[j] >= GATE]
    g = torch.Generator().manual_seed(seed)
    chosen = [gated[i] for i in torch.randperm(len(gated), generator=g)[:faithful_latents].tolist()]
    faith = {}
    if model is not None and chosen:
        candidates = test_prefixes(evalset)
        for j in sorted(chosen):
            b = int(desc.bsp[j])
            fam, i = index.locate(b)
            holds = lab_test[:, b]
            pool = [candidates[r] for r in (~holds).nonzero().squeeze(1).tolist()]
            tasks = draw_tasks(boards, pool, fam, i, prefixes, g)
            faith[j] = faithfulness(model, subject.site, boards, j, b, float(desc.fmax[j]), tasks)
    latents = []
    for j in desc.alive.nonzero().squeeze(1).tolist():
        b = int(desc.bsp[j])
        rec = {"latent": j, "bsp": b, "description": index.name(b), "family": fams[j],
               "f1": _num(desc.f1[j]), "precision": _num(desc.precision[j]), "recall": _num(desc.recall[j]),
               "threshold": _num(desc.threshold[j]), "max_activation": _num(desc.fmax[j])}
        for k in scores._fields:
            rec[k] = int(getattr(scores, k)[j]) if k == "clarity_positives" else _num(getattr(scores, k)[j])
        if j in faith:
            f = faith[j]
            rec["faithfulness"] = {"score": _num(f.score), "rates": f.rates, "prefixes": f.prefixes,
                                   "graded": None if f.graded is None else _num(f.graded),
                                   "graded_rates": f.graded_rates}
        latents.append(rec)
    return {"name": subject.name, "kind": subject.kind, "latents_total": subject.test.width,
            "described": len(latents), "summary": summarise(latents, list(evalset.families)),
            "faithfulness": {"factors": list(FACTORS), "prefixes": prefixes, "gated": len(gated),
                             "scored": len(faith), "limit": faithful_latents,
                             **({} if boards is not None else {"unavailable": no_board_edits(game)})},
            "seconds": {"describe_fade": round(t_fade, 2), "total": round(time.perf_counter() - t0, 2)},
            "latents": latents}


def no_board_edits(game: str) -> str:
    return (f"faithfulness and steering need board edits, and game {game!r} has none "
            "(Game.board_editor returns None)")


def summarise(latents: list[dict], families: list[str]) -> dict:
    """Per family of the descriptions (and 'all'): counts, means, and shares above the gate."""
    out = {}
    for fam in ["all", *families]:
        rows = [r for r in latents if fam == "all" or r["family"] == fam]
        if not rows:
            continue

        def col(k, rows=rows):
            return torch.tensor([float("nan") if r.get(k) is None else r[k] for r in rows])

        faith = torch.tensor([r["faithfulness"]["score"] for r in rows
                              if "faithfulness" in r and r["faithfulness"]["score"] is not None] or [float("nan")])
        out[fam] = {"latents": len(rows), "f1": _mean(col("f1")), "clarity": _mean(col("clarity")),
                    "clarity_labelled": _mean(col("clarity_labelled")),
                    "responsiveness": _mean(col("responsiveness")), "purity": _mean(col("purity")),
                    "purity_population": _mean(col("purity_population")), "prevalence": _mean(col("prevalence")),
                    "clarity_ge_0.5": _frac(col("clarity")), "responsiveness_ge_0.5": _frac(col("responsiveness")),
                    "purity_ge_0.5": _frac(col("purity")),
                    "faithfulness": _mean(faith), "faithfulness_scored": int((~torch.isnan(faith)).sum())}
    return out


def format_summary(records: list[dict]) -> str:
    """One table: a row per (subject, family) with the means and shares."""
    head = (f"{'features':<28} {'family':<20} {'latents':>7} {'F1':>6} {'clar':>6} {'resp':>6} {'pur':>6} "
            f"{'prev':>6} {'clar>=.5':>8} {'resp>=.5':>8} {'faith':>6} {'n':>3}")
    lines = [head, "-" * len(head)]

    def fmt(v, w=6):
        return f"{v:>{w}.3f}" if isinstance(v, float) else f"{'-':>{w}}"

    for rec in records:
        for fam, s in rec["summary"].items():
            lines.append(f"{rec['name']:<28} {fam:<20} {s['latents']:>7} {fmt(s['f1'])} {fmt(s['clarity'])} "
                         f"{fmt(s['responsiveness'])} {fmt(s['purity'])} {fmt(s['prevalence'])} "
                         f"{fmt(s['clarity_ge_0.5'], 8)} {fmt(s['responsiveness_ge_0.5'], 8)} "
                         f"{fmt(s['faithfulness'])} {s['faithfulness_scored']:>3}")
    return "\n".join(lines)


def top_latents(record: dict, n: int = 10, key: str = "f1") -> list[dict]:
    return sorted(record["latents"], key=lambda r: -(r.get(key) or 0))[:n]
