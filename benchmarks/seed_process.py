"""The seed path as its users run it: one fresh Python process, imports included.

``python -m benchmarks.seed_process FOLDER VAL_MONTH TRAIN_MONTH...`` reads the
month files with pandas, trains on the training months (concatenated) and
prints the :class:`pipeline.edge.seed.SeedResult` as JSON. It imports nothing
of the project but :mod:`pipeline.edge.seed`, so its start-up is the seed's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pipeline.core.months import Month
from pipeline.edge import seed
from pipeline.edge.sources import month_filename


def main(folder: Path, val: str, train: list[str]) -> dict[str, float]:
    def frame(month: str) -> pd.DataFrame:
        return seed.read_dataframe(folder / month_filename("yellow", Month.parse(month)))

    return asdict(seed.train_and_validate(pd.concat([frame(m) for m in train], ignore_index=True), frame(val)))


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])))
