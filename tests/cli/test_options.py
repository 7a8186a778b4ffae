"""The flags of train, retrain and predict against their config models: one default and one description per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args, get_origin

import click
import pytest
from pydantic import BaseModel

from pipeline.cli import cli
from pipeline.cli.common import field_help, flag
from pipeline.core.config import RetrainConfig, ScoreConfig, TrainConfig
from tests.conftest import cli_here

#: Each command, its config, and the options that are not fields (the cluster's, secrets, the schedule's).
COMMANDS: list[tuple[str, type[BaseModel]]] = [
    ("train", TrainConfig),
    ("retrain", RetrainConfig),
    ("predict", ScoreConfig),
    ("deploy", RetrainConfig),
]
NOT_FIELDS = {
    *("n_workers", "address", "cluster_class", "cluster_kwargs", "adapt_min", "adapt_max", "tls_ca_file", "tls_cert", "tls_key"),
    *("storage_options", "notify_url", "cron", "interval", "timezone", "name"),
}


@pytest.mark.parametrize(("command", "model"), COMMANDS)
def test_every_option_of_a_field_takes_its_default_and_description_from_the_model(command: str, model: type[BaseModel]) -> None:
    """Unset, a flag leaves the field to the model (default None here); its help is the field's description and default.
    Fails when someone changes a default or a description on one side only, or adds a flag for a field by hand; a field
    of a few values (a ``Literal``) takes exactly those (``retrain --model`` once left ``xgboost`` out)."""
    options = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
    fields = [p for p in options if p.name in model.model_fields]
    assert {p.name for p in options} - {p.name for p in fields} <= NOT_FIELDS
    for option in fields:
        field = model.model_fields[option.name]
        assert option.default is None, option.name
        assert option.help == field_help(field, option.required), option.name
        assert flag(option.name) in option.opts, option.name
        if get_origin(field.annotation) is Literal:
            assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == get_args(field.annotation), option.name
        if not option.required and field.default not in (None, False, ()) and field.default_factory is None:
            assert "[default: " in option.help, option.name  # the model's default, as the flag would take it


def test_defaults_are_shown_as_a_flag_takes_them() -> None:
    retrain = {p.name: p.help or "" for p in cli.commands["retrain"].params}
    assert retrain["alphas"].endswith("[default: 0.001,0.3,1,3,10].")
    assert retrain["candidates"].endswith("[default: base;trip_distance:log48,hour_of_week].")
    assert retrain["chunk_rows"].endswith("[default: 4,000,000].") and retrain["window"].endswith("[default: 2].")
    assert "[default: $TAXI_PIPELINE_HTTP_TIMEOUT, else 60]" in retrain["http_timeout"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["retrain", "--registry", "REG", "--window", "0"], "error: --window 0: Input should be greater than or equal to 1"),
        (["retrain", "--registry", "REG", "--folds", "0"], "error: --alphas 0.001,0.3,1,3,10 with --folds 0: without cross-validation"),
        (["retrain", "--registry", "REG", "--as-of", "April"], "error: --as-of 'April': Input should be a valid date"),
        (["predict", "--months", "2023-02", "--output", "OUT"], "error: give one model: --model DIR or --registry R [--version V]"),
        (["predict", "--months", "2023-02", "--output", "OUT", "--model", "M", "--version", "v1"], "error: --version goes with --registry"),
        (["predict", "--months", "2023-02", "--output", "OUT", "--model", "M", "--max-psi", "-1"], "error: --max-psi -1.0: Input should"),
    ],
)
def test_a_broken_rule_is_one_line_naming_the_flag_and_exit_2(tmp_path: Path, args: list[str], line: str) -> None:
    args = [str(tmp_path / a) if a in ("REG", "OUT", "M") else a for a in args]
    done = cli_here(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(line), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bad_variable_is_one_line_naming_it(tmp_path: Path) -> None:
    done = cli_here("retrain", "--registry", str(tmp_path / "r"), env={"TAXI_PIPELINE_STATS_CACHE_MAX_BYTES": "lots"})
    assert done.returncode == 2 and done.stderr.startswith("error: $TAXI_PIPELINE_STATS_CACHE_MAX_BYTES='lots': size 'lots'"), done.stderr
