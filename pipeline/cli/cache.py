"""``cache info|prune|clear``: see and bound the chunk statistics cache that ``train`` fills."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from pipeline.cli.common import cli, out, table
from pipeline.errors import PipelineError

LOCATION = click.option(
    "--stats-cache", default=None, help="Folder or fsspec URL [default: $TAXI_PIPELINE_STATS_CACHE, else stats/ in the month cache folder]."
)


def _parsed(module: str, parse_name: str) -> Any:
    """A click callback running ``<module>.<parse_name>`` on the flag's value, naming the flag when it is bad."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        import importlib

        if value is None:
            return None
        try:
            return getattr(importlib.import_module(module), parse_name)(value)
        except PipelineError as exc:
            raise click.BadParameter(str(exc), param_hint=param.opts[0]) from None

    return parse


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


def _open(location: str | None) -> Any:
    """The cache a run would use: the flag, else the run's default ($TAXI_PIPELINE_STATS_CACHE, else in the month cache)."""
    from pipeline.core.config import month_cache_default, stats_cache_default
    from pipeline.edge import stats_cache

    return stats_cache.StatsCache(stats_cache.resolve(location or stats_cache_default(), month_cache_default()))


def _max_bytes() -> int:
    """The bound runs keep the cache under: $TAXI_PIPELINE_STATS_CACHE_MAX_BYTES, else the default."""
    from pipeline.core.config import stats_cache_max_bytes_default

    bound: int = stats_cache_max_bytes_default()
    return bound


def _report(removed: int, freed: int, left: Any) -> None:
    from pipeline.edge.stats_cache import entries_text, human_size

    out.print(f"removed {entries_text(removed)} ({human_size(freed)}); {left.describe()} left", soft_wrap=True)  # it names the path


@cli.group()
def cache() -> None:
    """The chunk statistics cache: what it holds, and its clean-up."""


@cache.command()
@LOCATION
def info(stats_cache: str | None) -> None:
    """Print the cache's location, entries, total size, oldest and newest use, and the bound runs keep it under."""
    from pipeline.edge.stats_cache import human_size

    usage = _open(stats_cache).usage()
    rows = [
        ("entries", f"{usage.entries:,}"),
        ("size", human_size(usage.bytes)),
        ("limit", f"{human_size(_max_bytes())}, applied after each run"),
        ("oldest use", _when(usage.oldest)),
        ("newest use", _when(usage.newest)),
    ]
    out.print(table("statistics cache", ("field", "value"), rows))
    out.print(f"location: {usage.location}", soft_wrap=True)  # a long path stays one line that can be copied


@cache.command()
@LOCATION
@click.option(
    "--max-size",
    callback=_parsed("pipeline.core.config", "parse_size"),
    default=None,
    help="Keep the most recently used entries up to this size, e.g. 500MB.",
)
@click.option(
    "--older-than",
    callback=_parsed("pipeline.edge.stats_cache", "parse_age"),
    default=None,
    help="Remove entries unused for this long, e.g. 30d, 12h.",
)
def prune(stats_cache: str | None, max_size: int | None, older_than: float | None) -> None:
    """Remove least recently used entries: those unused for --older-than, then beyond --max-size [default: the run's limit]."""
    if max_size is None and older_than is None:
        max_size = _max_bytes()
    pruned = _open(stats_cache).prune(max_bytes=max_size, older_than=older_than)
    _report(pruned.removed, pruned.freed, pruned.left)


@cache.command()
@LOCATION
def clear(stats_cache: str | None) -> None:
    """Remove every entry."""
    pruned = _open(stats_cache).clear()
    _report(pruned.removed, pruned.freed, pruned.left)
