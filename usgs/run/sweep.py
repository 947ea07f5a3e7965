"""Sweep summaries: one Markdown table of every job of a Hydra ``-m`` run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from usgs.priors.report import markdown_table
from usgs.run.outputs import atomic_write_text

log = logging.getLogger(__name__)


class MultirunTable(Callback):
    """Hydra callback: at the end of a ``-m`` sweep, gather ``<job dir>/<filename>`` of every job into one
    Markdown table (``<sweep dir>/multirun_report.md``, also printed), with each job's overrides."""

    def __init__(self, filename: str = "report.json", output: str = "multirun_report.md") -> None:
        self.filename, self.output = filename, output

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = []
        for path in sorted(
            sweep_dir.glob(f"*/{self.filename}"), key=lambda p: (len(p.parent.name), p.parent.name)
        ):
            overrides = path.parent / ".hydra" / "overrides.yaml"
            row: dict[str, Any] = {"job": path.parent.name}
            if overrides.is_file():
                row["overrides"] = " ".join(OmegaConf.to_container(OmegaConf.load(overrides)))  # type: ignore[arg-type]
            row.update(
                {k: v for k, v in json.loads(path.read_text()).items() if not isinstance(v, (dict, list))}
            )
            rows.append(row)
        if not rows:
            log.warning("multirun finished but no %s was found under %s", self.filename, sweep_dir)
            return
        text = f"# {len(rows)} runs ({sweep_dir})\n\n" + markdown_table(rows)
        atomic_write_text(sweep_dir / self.output, text)
        print(text)
