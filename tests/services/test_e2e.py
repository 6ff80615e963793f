"""End to end: real producer, trainer and evaluator processes on loopback."""

import json
import os

import pytest

from boardlens.services.trainer import EXIT_STOPPED
from tests.services.helpers import (
    free_ports,
    healthz,
    scrape,
    services,
    start,
    value,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
MODELS = os.path.join(os.path.dirname(__file__), "..", "..", "models")


def _stockfish() -> bool:
    from boardlens.games.chess.sources import stockfish_path

    try:
        return bool(stockfish_path())
    except ValueError:
        return False


# Chess runs on Stockfish self-play when it is installed (make deps), else random games.
GAMES = {
    "othello": (["--batch-games", "16"], ("mine_theirs_empty", "legal_moves", "average")),
    "chess": (["--batch-games", "4", "--label-workers", "1",
               "--source", "stockfish:nodes=8-32" if _stockfish() else "random"],
              ("piece", "threat", "legal_moves", "check", "castling_any", "any_fork", "pin",
               "ambiguous_moves", "average", "strategy_average")),
}


@pytest.mark.parametrize("game", GAMES)
def test_pipeline_trains_and_evaluates_live(tmp_path, game):
    producer_args, families = GAMES[game]
    lossless, lossy, snaps, pm, tm, em = free_ports(6)
    ep = lambda p: f"tcp://127.0.0.1:{p}"  # noqa: E731
    run = str(tmp_path / "run")
    logs = {n: tmp_path / f"{n}.log" for n in ("producer", "trainer", "evaluator")}
    procs = {
        "evaluator": start("evaluate", "--connect", ep(lossy), "--snapshots", ep(snaps), "--run-dir", run,
                           "--train-games", "30", "--test-games", "30", "--threads", "1",
                           "--metrics-port", str(em), log_path=logs["evaluator"]),
        "trainer": start("train", "--connect", ep(lossless), "--snapshot-bind", ep(snaps), "--run-dir", run,
                         "--saes", "standard:penalty=0.05", "--saes", "p_anneal:penalty=0.05,anneal_start=50",
                         "--d-sae", "256", "--batch-size", "256", "--buffer-activations", "4096",
                         "--steps", "100000", "--warmup-steps", "20", "--snapshot-every", "50",
                         "--checkpoint-every", "100", "--threads", "1", "--metrics-port", str(tm),
                         log_path=logs["trainer"]),
        "producer": start("produce", "--model", os.path.join(MODELS, f"{game}-gpt-random"),
                          "--bind", ep(lossless), "--bind-lossy", ep(lossy), *producer_args,
                          "--wait-consumers", "1", "--wait-lossy-consumers", "1",
                          "--threads", "1", "--metrics-port", str(pm), log_path=logs["producer"]),
    }
    with services(procs, logs):
        first = wait_for(lambda: value(scrape(pm), "boardlens_producer_tokens_total") > 0 and scrape(pm),
                         120, "the producer to stream", procs)
        t = wait_for(lambda: (s := scrape(tm)) and value(s, "boardlens_trainer_steps_total",
                                                          sae="standard-256-0.05") >= 200 and s,
                     300, "200 SAE steps", procs)
        e = wait_for(lambda: (s := scrape(em)) and value(s, "boardlens_evaluator_evaluations_total") >= 2 and s,
                     120, "evaluations", procs)
        p = scrape(pm)
        for name in ("tokens", "batches", "bytes", "games"):
            metric = f"boardlens_producer_{name}_total"
            assert value(p, metric) > value(first, metric) > 0, metric
        assert value(p, "boardlens_producer_forward_seconds_count") > 0
        assert value(p, "boardlens_producer_subscribers", mode="lossless") == 1
        assert value(t, "boardlens_trainer_tokens_total") >= 200 * 256
        assert value(t, "boardlens_trainer_batches_lost_total") == 0
        for sae in ("standard-256-0.05", "p_anneal-256-0.05"):
            assert value(t, "boardlens_trainer_l0", sae=sae) > 0
            assert ("boardlens_trainer_sparsity_alpha", (("sae", sae),)) in t
        for fam in families:
            for metric in ("boardlens_evaluator_coverage", "boardlens_evaluator_reconstruction"):
                assert any(n == metric and dict(lab).get("family") == fam for n, lab in e), (metric, fam)
        assert value(e, "boardlens_evaluator_eval_set_games", split="train") == 30
        described_live = wait_for(lambda: any(n == "boardlens_evaluator_latent_score" and dict(lab)["score"] == "clarity"
                                              for n, lab in scrape(em)), 120, "latent descriptions", procs)
        for port in (pm, tm, em):
            code, info = healthz(port)
            assert code == 200 and info["ok"], info
    # SIGTERM (sent by `services`) stops everything cleanly; the trainer, stopped before its
    # steps were done, says so (EXIT_STOPPED: a Job restarts it rather than completing).
    codes = {n: q.returncode for n, q in procs.items()}
    assert codes == {"producer": 0, "trainer": EXIT_STOPPED, "evaluator": 0}, codes
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    evaluations = [r for r in records if "families" in r]
    assert evaluations and {"families", "l0", "var_explained", "sae", "step"} <= set(evaluations[-1])
    # the first evaluation of each SAE also described its latents (describe_every's default)
    described = {r["describe"] for r in records if "describe" in r}
    assert described == {"standard-256-0.05", "p_anneal-256-0.05"}, described
    for sae in described:
        d = json.loads((tmp_path / "run" / "descriptions" / f"{sae}.json").read_text())
        assert d["name"] == sae and d["latents_total"] == 256 and "all" in d["summary"]
    assert described_live
    assert (tmp_path / "run" / "checkpoints" / "latest" / "standard-256-0.05.safetensors").exists()
