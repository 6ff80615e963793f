"""Config precedence, validation and the generated CLI."""

import pytest
from click.testing import CliRunner

from boardlens.parse import field_docs
from boardlens.services.cli import main
from boardlens.services.config import (
    EvaluatorConfig,
    ProducerConfig,
    TrainerConfig,
    resolve,
)


def test_precedence_defaults_file_env_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("producer:\n  batch_games: 8\n  seed: 3\ntrainer:\n  d_sae: 128\n")
    cfg = resolve(ProducerConfig, str(f), {"seed": None}, environ={})
    assert (cfg.batch_games, cfg.seed) == (8, 3)
    cfg = resolve(ProducerConfig, str(f), {}, environ={"BOARDLENS_PRODUCER_BATCH_GAMES": "16"})
    assert cfg.batch_games == 16
    cfg = resolve(ProducerConfig, str(f), {"batch_games": 32}, environ={"BOARDLENS_PRODUCER_BATCH_GAMES": "16"})
    assert cfg.batch_games == 32
    t = resolve(TrainerConfig, str(f), {"saes": ("standard", "p_anneal")}, environ={})
    assert t.d_sae == 128 and t.saes == ("standard", "p_anneal")
    toml = tmp_path / "c.toml"
    toml.write_text("[evaluator]\ntrain_games = 7\n")
    assert resolve(EvaluatorConfig, str(toml), {}, environ={}).train_games == 7


@pytest.mark.parametrize("bad", [
    {"batch_games": -1}, {"label_workers": -1}, {"dtype": "int8"}, {"bind": "127.0.0.1:5"}, {"device": "tpu"}, {"max_tokens": -1},
])
def test_bad_producer_values(bad):
    with pytest.raises(ValueError):
        resolve(ProducerConfig, None, bad, environ={})


def test_bad_trainer_values_and_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="buffer_activations"):
        resolve(TrainerConfig, None, {"batch_size": 100, "buffer_activations": 150}, environ={})
    with pytest.raises(ValueError, match="unknown"):
        resolve(TrainerConfig, None, {}, environ={"BOARDLENS_TRAINER_NOPE": "1"})
    with pytest.raises(ValueError, match="d_sae: 'many' is not a valid int"):
        resolve(TrainerConfig, None, {}, environ={"BOARDLENS_TRAINER_D_SAE": "many"})


@pytest.mark.parametrize("text, error", [
    ("trainer:\n  d_sae: 1.9\n", "d_sae: 1.9 is not a valid int"),  # never truncated to 1
    ("trainer:\n  batch_size: true\n", "batch_size: True is not a valid int"),
    ("trainer:\n  lr: yes\n", "lr: True is not a valid float"),  # YAML 1.1 reads yes as a bool
    ("trainer:\n  insecure: 1\n", "insecure: 1 is not a valid bool"),
    ("trainer:\n  saes: standard\n", None),  # one spec as text is fine
])
def test_one_type_rule_for_config_files(tmp_path, text, error):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    if error is None:
        assert resolve(TrainerConfig, str(f), {}, environ={}).saes == ("standard",)
    else:
        with pytest.raises(ValueError, match=error):
            resolve(TrainerConfig, str(f), {}, environ={})
    env = {"BOARDLENS_TRAINER_BATCH_SIZE": "8192.0"}
    with pytest.raises(ValueError, match="batch_size: '8192.0' is not a valid int"):
        resolve(TrainerConfig, None, {}, environ=env)
    f = tmp_path / "bad.yaml"
    f.write_text("producer: [1, 2\n")
    with pytest.raises(ValueError, match="cannot parse"):
        resolve(ProducerConfig, str(f), {}, environ={})


def test_every_field_is_documented_and_a_flag():
    runner = CliRunner()
    for cls, cmd in ((ProducerConfig, "produce"), (TrainerConfig, "train"), (EvaluatorConfig, "evaluate")):
        docs = field_docs(cls)
        help_text = runner.invoke(main, [cmd, "--help"]).output
        for name in cls.__dataclass_fields__:
            assert docs.get(name), f"{cls.__name__}.{name} has no docstring"
            assert "--" + name.replace("_", "-") in help_text
    out = runner.invoke(main, ["produce", "--batch-games", "-1"])
    assert out.exit_code == 2 and "batch_games and label_workers must be >= 0" in out.output


def test_version_flag():
    from click.testing import CliRunner

    from boardlens.services.cli import main

    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "boardlens, version " in r.output


def test_a_misspelt_boolean_is_an_error_not_false():
    from boardlens.services.config import EvaluatorConfig, resolve

    assert resolve(EvaluatorConfig, environ={"BOARDLENS_EVALUATOR_REFERENCES": "Off"}).references is False
    assert resolve(EvaluatorConfig, environ={"BOARDLENS_EVALUATOR_REFERENCES": "yes"}).references is True
    with pytest.raises(ValueError, match="references"):
        resolve(EvaluatorConfig, environ={"BOARDLENS_EVALUATOR_REFERENCES": "flase"})
