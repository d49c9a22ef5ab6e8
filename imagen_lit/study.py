"""The paper's studies on the synthetic world, one command each (Imagen Sec. 4.3-4.4, Figs. 4, A.10, A.13): train
every configuration of conf/study/<name>.yaml, score it on held-out scenes, and write summary.csv, a plot and a
markdown table with 95% Wilson intervals.

    python -m imagen_lit.study encoder_scale                     # runs under outputs/study/, results under
                                                                 # experiments/results/encoder_scale/
    python -m imagen_lit.study encoder_scale --seeds 0 1         # more training seeds where configs are close
    python -m imagen_lit.study encoder_scale --seeds 1 --configs minilm_l1 minilm   # a second seed of two configs;
                                                                 # the rows summary.csv records are kept
    python -m imagen_lit.study encoder_scale --dry-run           # print the commands, run nothing

Resumable: a finished training run (its metrics.json) or evaluation is skipped, and an unfinished run resumes from
its last.ckpt. Every configuration x seed gets its row in summary.csv (status ok, failed with its error, or
missing) and the exit code is 1 unless all are ok, so a dropped configuration cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from imagen_lit.eval.curves import checkpoint_minutes
from imagen_lit.study_report import PROBES, intervals, markdown, plots, read_summary
from imagen_lit.sweep import FAILURE_FILE, METRICS_FILE, write_summary

ROOT = Path(__file__).resolve().parents[1]
STUDY_DIR = ROOT / "conf" / "study"
TIME_FILE = "study_time.json"  # training seconds, summed over resumes
SPEC_KEYS = {"claim", "section", "train", "evaluate", "seeds", "configs", "sweep", "plot", "steps", "base", "evaluator",
             "probe", "baseline"}
PROBE_FILE = "probe.json"
EVALUATORS = ("sample", "cascade")


@dataclass
class Job:
    """One row of a study: a configuration at a training seed, its training run and its evaluation."""

    config: str
    seed: int
    train: list[str]
    evaluate: list[str]
    run: str  # run folder name; configurations with equal training overrides share one run
    fields: dict[str, Any] = field(default_factory=dict)  # extra columns from the spec (group, x, ...)
    step: int | None = None  # score this step's checkpoint (a learning curve); None: the run's last

    @property
    def point(self) -> str:
        """The configuration (at its step): what the table pools over seeds."""
        return self.config if self.step is None else f"{self.config}@{self.step}"

    @property
    def name(self) -> str:
        return f"{self.config}_s{self.seed}" + ("" if self.step is None else f"_step{self.step}")

    @property
    def checkpoint(self) -> str:
        return "last.ckpt" if self.step is None else f"step_{self.step:07d}.ckpt"


def folder_name(name: str) -> str:
    """A job's folder: its name with every character a Hydra override value would misread ('=', ',', ...) as '-'."""
    return re.sub(r"[^A-Za-z0-9._@-]", "-", name)


def load_spec(study: str) -> dict[str, Any]:
    """conf/study/<study>.yaml (or a path) as a dict, with a one-line error for unknown keys."""
    path = Path(study) if study.endswith(".yaml") else STUDY_DIR / f"{study}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no study {study!r}; known studies: {', '.join(known)} (or a path to a .yaml)")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    if spec.get("evaluator", "sample") not in EVALUATORS:
        raise ValueError(f"{path}: evaluator must be one of {EVALUATORS}, got {spec['evaluator']!r}")
    if spec.get("probe") and spec.get("evaluator") == "cascade":
        raise ValueError(f"{path}: probe (the base stage's relation_likelihood) does not apply to a cascade study")
    if (spec.get("evaluator") == "cascade") != bool(spec.get("base")):
        raise ValueError(f"{path}: evaluator cascade (SR stages on a base's samples) needs base: [its train.py "
                         "overrides], and base needs evaluator: cascade")
    spec["name"] = path.stem
    if spec.get("baseline") is not None and spec["baseline"] not in expand_configs(spec):
        raise ValueError(f"{path}: baseline {spec['baseline']!r} is not one of its configs; name one of "
                         f"{', '.join(expand_configs(spec))}")
    return spec


def expand_configs(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The spec's configs, plus one per point of its `sweep` grid ({evaluate: {key: [values]}}), in order."""
    configs = {name: dict(c or {}) for name, c in (spec.get("configs") or {}).items()}
    grid = (spec.get("sweep") or {}).get("evaluate") or {}
    for values in itertools.product(*grid.values()) if grid else []:
        point = dict(zip(grid, values, strict=True))
        name = "_".join(f"{k}={v}" for k, v in point.items())
        configs[name] = {"evaluate": [f"{k}={v}" for k, v in point.items()], **point}
    if not configs:
        raise ValueError(f"study {spec['name']!r} has no configs and no sweep grid")
    return configs


def plan(spec: dict[str, Any], seeds: Sequence[int] | None = None, configs: Sequence[str] | None = None) -> list[Job]:
    """Every configuration (or those named) x seed as a Job, in the spec's order; equal training overrides share a
    run."""
    jobs, runs = [], {}
    known = expand_configs(spec)
    unknown = [c for c in configs or [] if c not in known]
    if unknown:
        raise ValueError(f"study {spec['name']!r} has no configs {unknown}; known: {', '.join(known)}")
    for seed in seeds if seeds is not None else spec.get("seeds", [0]):
        for name, c in known.items():
            if configs and name not in configs:
                continue
            train = [*spec.get("train", []), *c.get("train", [])]
            own = f"{name}_s{seed}" if "train" in c else f"shared_s{seed}"  # a sweep at sampling time: one run
            run = runs.setdefault((tuple(train), seed), own)
            fields = {k: v for k, v in c.items() if k not in ("train", "evaluate")}
            evaluate = [*spec.get("evaluate", []), *c.get("evaluate", [])]
            for step in spec.get("steps") or [None]:
                jobs.append(Job(name, seed, train, evaluate, run, fields, step))
    return jobs


class Runner:
    """Runs train.py and sample.py for a study's jobs as subprocesses, skipping what is already done."""

    def __init__(self, runs_dir: Path, extra_train: Sequence[str] = (), extra_eval: Sequence[str] = (),
                 dry_run: bool = False, python: str = sys.executable, evaluator: str = "sample",
                 probe: dict[str, Any] | None = None):
        self.runs_dir, self.dry_run, self.python, self.evaluator = Path(runs_dir), dry_run, python, evaluator
        self.probe_options = dict(probe or {})
        self.extra_train, self.extra_eval = list(extra_train), list(extra_eval)
        self.trained: dict[str, bool] = {}  # run -> outcome, so a shared run is trained (or fails) once
        self.sizes: dict[Path, dict[str, int]] = {}  # run -> model sizes, read once for the rows sharing it

    def run_dir(self, job: Job) -> Path:
        return self.runs_dir / "runs" / folder_name(job.run)

    def eval_dir(self, job: Job) -> Path:
        return self.runs_dir / "evals" / folder_name(job.name)

    def _call(self, cmd: list[str]) -> bool:
        print("+ " + " ".join(cmd), flush=True)
        return self.dry_run or subprocess.run(cmd, cwd=ROOT).returncode == 0

    def train(self, job: Job) -> bool:
        """Train (or resume) the job's run once; True when its metrics.json exists afterwards."""
        if job.run not in self.trained:
            self.trained[job.run] = self._train(job)
        return self.trained[job.run]

    def _train(self, job: Job) -> bool:
        run = self.run_dir(job)
        if (run / METRICS_FILE).is_file():
            return True
        cmd = [self.python, str(ROOT / "train.py"), *job.train, *self.extra_train, f"seed={job.seed}",
               f"hydra.run.dir={run}"]
        last = run / "checkpoints" / "last.ckpt"
        if last.is_file():
            cmd.append(f"ckpt_path={last}")
        (run / FAILURE_FILE).unlink(missing_ok=True)  # a retry's outcome replaces the last one's
        start = time.time()
        ok = self._call(cmd)
        if not self.dry_run:
            spent = time.time() - start
            timing = run / TIME_FILE
            before = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0
            run.mkdir(parents=True, exist_ok=True)
            timing.write_text(json.dumps({"seconds": before + spent}))
        return ok and (self.dry_run or (run / METRICS_FILE).is_file())

    def base_dir(self, seed: int) -> Path:
        """The base stage's run that a cascade study's SR stages start from (one per seed)."""
        return self.runs_dir / "runs" / f"base_s{seed}"

    def evaluate(self, job: Job) -> bool:
        """Score the run's checkpoint on held-out scenes (sample.py, or the cascade on its base's samples); True when
        its metrics exist."""
        out = self.eval_dir(job)
        if (out / METRICS_FILE).is_file():
            return True
        (out / FAILURE_FILE).unlink(missing_ok=True)
        if self.evaluator == "cascade":
            return self._evaluate_cascade(job, out)
        ckpt = self.run_dir(job) / "checkpoints" / job.checkpoint
        cmd = [self.python, str(ROOT / "sample.py"), f"ckpt_path={ckpt}", "evaluate=true", "progress=false",
               *job.evaluate, *self.extra_eval, f"hydra.run.dir={out}"]
        return self._call(cmd) and (self.dry_run or (out / METRICS_FILE).is_file())

    def probe(self, job: Job) -> bool:
        """experiments/relation_likelihood.py on the job's checkpoint: does the denoiser prefer the true relation,
        binding and shapes over counterfactual captions (paired, no sampling); True when its probe.json exists."""
        out = self.eval_dir(job) / PROBE_FILE
        if out.is_file():
            return True
        cmd = [self.python, str(ROOT / "experiments" / "relation_likelihood.py"),
               str(self.run_dir(job) / "checkpoints" / job.checkpoint), "--json", str(out),
               *(f"--{k.replace('_', '-')}={v}" for k, v in self.probe_options.items())]
        return self._call(cmd)

    def _evaluate_cascade(self, job: Job, out: Path) -> bool:
        """experiments/cascade_vs_bicubic.py at one aug_level (or 'bicubic'): export base + this SR stage, sample
        the base on held-out scenes, upsample its samples, score at the SR size; that row becomes metrics.json."""
        opts = dict(o.split("=", 1) for o in [*job.evaluate, *self.extra_eval])
        level = opts.pop("aug_level", "0.0")
        cascade = out / "cascade"
        export = [self.python, "-m", "imagen_lit.cascade", "export", str(cascade),
                  str(self.base_dir(job.seed) / "checkpoints" / "last.ckpt"),
                  str(self.run_dir(job) / "checkpoints" / job.checkpoint)]
        score = [self.python, str(ROOT / "experiments" / "cascade_vs_bicubic.py"), str(cascade), "--aug-levels",
                 *([] if level == "bicubic" else [level]), "--json", str(out / "rows.json"),
                 "--base-samples", str(self.base_dir(job.seed) / "base_samples.pt"),  # one base sampling per study
                 *(f"--{k.replace('_', '-')}={v}" for k, v in opts.items())]
        if not self.dry_run:
            out.mkdir(parents=True, exist_ok=True)
        if not (self._call(export) and self._call(score)):
            return False
        if self.dry_run:
            return True
        method = json.loads((out / "rows.json").read_text())[1 if level == "bicubic" else 2]
        fidelity = ("domain_", "fid_")  # domain FID/KID, and FID minus bicubic's with its interval
        metrics = {("fidelity/" if k.startswith(fidelity) else "alignment/") + k: v for k, v in method.items()
                   if k not in ("method", "size", "overall_lo", "overall_hi")}
        metrics.update(method=method["method"], size=method["size"], aug_level=level)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        return True

    def row(self, job: Job) -> dict[str, Any]:
        """The job's summary row: status, its overrides, every metric, the intervals and the model sizes."""
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join([*job.train, "|", *job.evaluate]),
                               "config": job.config, "point": job.point, "seed": job.seed, "step": job.step,
                               **job.fields}
        run, out = self.run_dir(job), self.eval_dir(job)
        if (out / METRICS_FILE).is_file():
            metrics = json.loads((out / METRICS_FILE).read_text())
            if run not in self.sizes:
                self.sizes[run] = model_sizes(run)
            row.update(status="ok", **metrics, **intervals(metrics), **self.sizes[run])
            if (out / PROBE_FILE).is_file():
                probe = json.loads((out / PROBE_FILE).read_text())
                for k in PROBES:
                    row[f"probe/{k}"] = probe[f"{k}/all"]["prefers_true"]
                row["probe/scenes"] = probe["scenes"]
            if job.step is not None:  # minutes of training when this checkpoint was written
                row["train_minutes"] = checkpoint_minutes(run, run / "checkpoints" / job.checkpoint)
            elif (run / TIME_FILE).is_file():  # the whole run, set-up included
                row["train_minutes"] = json.loads((run / TIME_FILE).read_text())["seconds"] / 60
        else:
            dirs = (self.base_dir(job.seed), run, out) if self.evaluator == "cascade" else (run, out)
            failure = next((d / FAILURE_FILE for d in dirs if (d / FAILURE_FILE).is_file()), None)
            if failure is not None:
                row.update(status="failed", error=json.loads(failure.read_text())["error"])
            else:
                row.update(status="missing")  # not run yet, killed, or a subprocess died before writing
        return row


def model_sizes(run: Path) -> dict[str, int]:
    """unet_params (trained weights, EMA copy excluded) and text_params of the run's frozen encoder."""
    from hydra.utils import instantiate

    from imagen_lit.build import read_stage_checkpoint

    checkpoint, cfg = read_stage_checkpoint(run / "checkpoints" / "last.ckpt")
    unet = sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("unet."))
    encoder = instantiate(cfg.text_encoder)
    text = sum(p.numel() for p in encoder.model.parameters())
    return {"unet_params": unet, "text_params": text}


def with_recorded(summary: Path, rows: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """This call's rows merged into those summary.csv already records, so that more seeds or a subset of configs
    (--seeds, --configs) added on a checkout without the earlier run folders keep the earlier results: a recorded
    ok row stands where this call has none for its job (missing, same overrides), any other result of this call
    replaces it, and recorded rows of configurations the spec no longer has are dropped."""
    if not summary.is_file():
        return rows
    fresh, merged, configs = {r["job"]: r for r in rows}, [], expand_configs(spec)
    for old in read_summary(summary):
        if old.get("config") not in configs:
            continue
        new = fresh.pop(old["job"], None)
        keep = new is None or (new["status"] == "missing" and old.get("status") == "ok"
                               and old.get("overrides") == new["overrides"])
        merged.append(old if keep else new)
    return merged + list(fresh.values())


def run_study(spec: dict[str, Any], out_dir: Path, runner: Runner, seeds: Sequence[int] | None = None,
              command: str = "", configs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train and score every job (or those of the named configs), then write summary.csv (merged with the rows it
    already records), summary.md and plot.png into out_dir."""
    jobs = plan(spec, seeds, configs)
    bases = {s: Job("base", s, list(spec["base"]), [], f"base_s{s}") for s in dict.fromkeys(j.seed for j in jobs)
             } if spec.get("base") else {}
    for job in jobs:
        if (job.seed not in bases or runner.train(bases[job.seed])) and runner.train(job):
            if runner.evaluate(job) and spec.get("probe"):
                runner.probe(job)
    if runner.dry_run:
        return []
    rows = [{**runner.row(job), "command": command} for job in jobs]  # each row keeps the call that made it
    rows = with_recorded(out_dir / "summary.csv", rows, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_summary(out_dir, rows)
    (out_dir / "summary.md").write_text(markdown(spec, rows, command))
    plots(spec, rows, out_dir, runner.runs_dir)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a name in conf/study/ or a path to a study .yaml")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the spec's)")
    parser.add_argument("--configs", nargs="+", help="only these configurations (default: all); rows already in "
                        "summary.csv for the others are kept")
    parser.add_argument("--out", type=Path, help="results folder (default experiments/results/<study>)")
    parser.add_argument("--runs", type=Path, help="training and evaluation folders (default outputs/study/<study>)")
    parser.add_argument("--train-override", nargs="*", default=[], help="appended to every train.py call")
    parser.add_argument("--eval-override", nargs="*", default=[], help="appended to every sample.py call")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.study)
        plan(spec, args.seeds, args.configs)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or ROOT / "experiments" / "results" / spec["name"]
    runner = Runner(args.runs or ROOT / "outputs" / "study" / spec["name"], args.train_override, args.eval_override,
                    args.dry_run, evaluator=spec.get("evaluator", "sample"),
                    probe=spec["probe"] if isinstance(spec.get("probe"), dict) else None)
    command = "python -m imagen_lit.study " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = run_study(spec, out, runner, args.seeds, command, args.configs)
    if args.dry_run:
        return 0
    bad = [r["job"] for r in rows if r["status"] != "ok"]
    print(f"{len(rows)} rows, {len(bad)} not ok{': ' + ', '.join(bad) if bad else ''} -> {out / 'summary.csv'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
