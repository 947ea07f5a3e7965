"""Sweep summaries: one Markdown table of every job of a Hydra ``-m`` run, and jobs that differ only
in ``seed`` grouped into mean ± std (population std, ddof 0: the spread of the seeds that were run,
the convention of every mean ± std in this suite). Scores are fractions in ``metrics.json`` /
``report.json`` and percent in the tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from usgs.evaluation.report import mean_std
from usgs.priors.report import is_score, markdown_table
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
        for path in sorted(sweep_dir.glob(f"*/{self.filename}"), key=lambda p: _job_order(p.parent.name)):
            overrides = path.parent / ".hydra" / "overrides.yaml"
            row: dict[str, Any] = {"job": path.parent.name.split("_", 1)[0]}  # <num>_<overrides>
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
        groups = seed_groups(rows)
        if any(len(g) > 1 for g in groups.values()):
            text += ("\n## Over seeds: mean ± std (population std, ddof 0; scores in %)\n\n"
                     + markdown_table([summarise(key, g) for key, g in groups.items()]))
        atomic_write_text(sweep_dir / self.output, text)
        print(text)


class BestTrialCommand(Callback):
    """Hydra callback of a hyperparameter search (``hparams_search/*``, whose trials run ``test=false``):
    at the end it prints, and writes to ``<sweep dir>/test_command.txt``, the one command that trains
    the best trial's configuration (by the val metric the search optimised) and tests it once."""

    def __init__(self, script: str = "train.py", output: str = "test_command.txt") -> None:
        self.script, self.output = script, output

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = sweep_dir / "optimization_results.yaml"
        if not results.is_file():
            log.warning("no %s: the search chose no configuration to test", results)
            return
        best = OmegaConf.load(results)
        params = {str(k): v for k, v in (best.get("best_params") or {}).items()}
        task = [o for o in config.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in params
                and not o.startswith(("hparams_search=", "hydra.", "test="))]
        command = " ".join(["python", self.script, *task, *(f"{k}={v}" for k, v in params.items()), "test=true"])
        text = (f"# best trial: {config.get('optimized_metric')} = {best.get('best_value')} (val); "
                f"test it once:\n{command}\n")
        atomic_write_text(sweep_dir / self.output, text)
        print(text)


def _job_order(name: str) -> tuple[int, str]:
    number = name.split("_", 1)[0]
    return (int(number) if number.isdigit() else 1 << 30, name)


def seed_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Jobs keyed by their overrides without ``seed=...`` (jobs differing only in the seed share a key)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = " ".join(o for o in str(row.get("overrides", "")).split() if not o.startswith("seed="))
        groups.setdefault(key, []).append(row)
    return groups


def summarise(key: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row: the shared overrides, the seeds, and mean ± std of every numeric column."""
    out: dict[str, Any] = {"overrides": key or "(none)", "seeds": len(rows)}
    for column in rows[0]:
        values = [r.get(column) for r in rows]
        if column in ("job", "overrides") or not all(isinstance(v, (int, float)) and v is not None for v in values):
            continue
        mean, std = mean_std([float(v) for v in values])
        scale = 100.0 if is_score(column) else 1.0
        out[column] = f"{scale * mean:.1f} ± {scale * std:.1f}"  # the table's header adds (%) to scores
    return out
