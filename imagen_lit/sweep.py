"""Hydra multirun summary: every job's overrides, status and final metrics in one CSV and a printed table."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
FAILURE_FILE = "failed.json"


MAX_DIRNAME = 120


def safe_dirname(name: str, limit: int = MAX_DIRNAME) -> str:
    """A job folder name from its overrides, shortened (prefix + hash of the whole) to stay a legal file name."""
    name = name.replace("/", "_")
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    """${safe_dirname:...} for Hydra configs (used by hydra.sweep.subdir); ${cpu_precision:} for trainer=cpu; and
    `open_stage_sampling`, the one config node that takes new keys without '+' (stage_sampling.<any stage>.k=v)."""
    from hydra.core.config_store import ConfigStore

    from imagen_lit.precision import auto_cpu_precision

    open_node = OmegaConf.create({})
    OmegaConf.set_struct(open_node, False)  # Hydra makes the rest struct; this node keeps its own flag
    ConfigStore.instance().store(name="open_stage_sampling", node=open_node)

    if not OmegaConf.has_resolver("safe_dirname"):
        OmegaConf.register_new_resolver("safe_dirname", safe_dirname)
    if not OmegaConf.has_resolver("cpu_precision"):
        OmegaConf.register_new_resolver("cpu_precision", auto_cpu_precision)


def record_failure(output_dir: str | Path, err: BaseException) -> Path:
    """Write the job's error next to its outputs so the sweep summary can report it."""
    path = Path(output_dir) / FAILURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"error": f"{type(err).__name__}: {err}",
                                "traceback": "".join(traceback.format_exception(err))}, indent=2))
    return path


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> None:
    """Run a Hydra task function. Single run: bad input ends with a one-line error and exit code 2. Multirun:
    a failing job is recorded in its folder (failed.json) and logged, and the sweep goes on."""
    try:
        task(cfg)
    except Exception as err:
        record_failure(cfg.paths.output_dir, err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.exception("job failed; the sweep goes on")
            return
        if isinstance(err, (ValueError, FileNotFoundError)):
            log.error("%s", err)
            sys.exit(2)
        raise


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder of the sweep: job number, overrides, status (ok | failed | missing), metrics."""
    rows = []
    for overrides_file in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = " ".join(OmegaConf.load(overrides_file))
        row: dict[str, Any] = {"job": job_dir.name, "overrides": overrides}
        if (job_dir / METRICS_FILE).is_file():
            row.update(status="ok", **json.loads((job_dir / METRICS_FILE).read_text()))
        elif (job_dir / FAILURE_FILE).is_file():
            row.update(status="failed", error=json.loads((job_dir / FAILURE_FILE).read_text())["error"])
        else:
            row.update(status="missing")  # killed, or still running
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """summary.csv in the sweep folder, columns: job, overrides, status, then every metric seen."""
    columns = ["job", "overrides", "status"]
    columns += sorted({k for r in rows for k in r} - set(columns) - {"error"}) + ["error"]
    path = Path(sweep_dir) / "summary.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_table(rows: list[dict[str, Any]], metrics: tuple[str, ...] = ("hp/final_loss",)) -> str:
    """A fixed-width table of the jobs with the chosen metrics."""
    header = ["job", "status", *metrics, "overrides"]
    lines = [header] + [[r["job"], r["status"], *(_fmt(r.get(m)) for m in metrics), r["overrides"]] for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else ("-" if value is None else str(value))


class SweepSummary(Callback):
    """At the end of a multirun, write <sweep dir>/summary.csv and log the table (failed jobs included).

    With `pareto={x: metric, y: metric}` and jobs that report guidance_weight and thresholding, it also draws the
    guidance Pareto curves (Imagen Fig. A.10): <sweep dir>/pareto.png and the same image in <sweep dir>/tensorboard.
    """

    def __init__(self, metrics: list[str] | None = None, pareto: dict[str, str] | None = None):
        self.metrics = tuple(metrics or ["hp/final_loss"])
        self.pareto = dict(pareto) if pareto else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            return
        path = write_summary(sweep_dir, rows)
        failed = sum(r["status"] != "ok" for r in rows)
        table = format_table(rows, self.metrics)
        log.info("sweep summary (%d jobs, %d not ok) -> %s\n%s", len(rows), failed, path, table)
        if self.pareto and any("guidance_weight" in r for r in rows):
            plot = write_pareto(sweep_dir, rows, self.pareto["x"], self.pareto["y"])
            log.info("guidance Pareto curves -> %s", plot)


def write_pareto(sweep_dir: str | Path, rows: list[dict[str, Any]], x: str, y: str) -> Path:
    """pareto.png of y against x over guidance weights, one curve per thresholding mode, also in TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    from imagen_lit.eval.guidance import pareto_rows
    from imagen_lit.eval.plot import draw_curves, save_plot

    curves = pareto_rows(rows, x, y)
    array = draw_curves(curves, x_label=x, y_label=y, title="labels: guidance weight")
    path = save_plot(array, Path(sweep_dir) / "pareto.png")
    with SummaryWriter(str(Path(sweep_dir) / "tensorboard")) as writer:
        writer.add_image("guidance_pareto", array, dataformats="HWC")
        for mode, points in curves.items():
            for weight, xv, yv in points:
                step = int(round(weight * 100))  # the guidance weight x 100 on the step axis
                writer.add_scalar(f"sweep/{mode}/{x}", xv, step)
                writer.add_scalar(f"sweep/{mode}/{y}", yv, step)
    return path
