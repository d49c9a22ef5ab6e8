"""The study driver's report: one line per configuration pooled over seeds with 95% Wilson intervals, the markdown
table, and the plots (imagen_lit.study writes them next to summary.csv)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from imagen_lit.eval.compositional import CATEGORIES
from imagen_lit.eval.stats import difference_interval, homogeneity_p, rank_test_p, wilson_interval
from imagen_lit.sweep import write_pareto

NAMES = {"colour": "single", "counting": "counting", "position": "position", "binding": "binding",
         "overall": "overall"}
PROBES = ("relation", "colours", "shapes", "absent")  # experiments/relation_likelihood.py counterfactuals


def intervals(metrics: dict[str, Any]) -> dict[str, float]:
    """<category>_lo / _hi: 95% Wilson bounds of each accuracy from its image count."""
    out = {}
    for cat in (*CATEGORIES, "overall"):
        key, n_key = f"alignment/{cat}", "alignment/n_images" if cat == "overall" else f"alignment/n_{cat}"
        if key in metrics and n_key in metrics:
            n = int(metrics[n_key])
            out[f"{key}_lo"], out[f"{key}_hi"] = wilson_interval(round(metrics[key] * n), n)
    return out


def pooled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per configuration (at its step): accuracies pooled over its seeds (summed counts), with Wilson
    intervals; status is that of its first row unless some seed is ok."""
    out = []
    for point in dict.fromkeys(r["point"] for r in rows):
        mine = [r for r in rows if r["point"] == point]
        group = [r for r in mine if r["status"] == "ok"]
        line: dict[str, Any] = {"config": point, "seeds": len(group), "status": "ok" if group else mine[0]["status"]}
        for cat in (*CATEGORIES, "overall"):
            n_key = "alignment/n_images" if cat == "overall" else f"alignment/n_{cat}"
            n = sum(int(r.get(n_key, 0)) for r in group)
            k = sum(round(r.get(f"alignment/{cat}", 0.0) * int(r.get(n_key, 0))) for r in group)
            if n:
                line[cat] = (k / n, *wilson_interval(k, n))
        scored = [(int(r["seed"]), int(r["alignment/n_images"]), r.get("alignment/overall", 0.0)) for r in group
                  if r.get("alignment/n_images")]
        line["overall_by_seed"] = sorted((seed, round(acc * n), n) for seed, n, acc in scored)  # (seed, k, n)
        fids = [r["fidelity/domain_fid"] for r in group if r.get("fidelity/domain_fid") is not None]
        line["fid"] = sum(fids) / len(fids) if fids else None
        for probe in PROBES:  # paired preferences of the true caption, pooled over seeds
            scored = [r for r in group if r.get(f"probe/{probe}") is not None]
            n = sum(int(r["probe/scenes"]) for r in scored)
            if n:
                k = sum(round(float(r[f"probe/{probe}"]) * int(r["probe/scenes"])) for r in scored)
                line[f"probe/{probe}"] = (k / n, *wilson_interval(k, n))
        for key in ("unet_params", "text_params", "train_minutes", "step"):
            vals = [r[key] for r in group if r.get(key) is not None]
            line[key] = sum(vals) / len(vals) if vals else None
        out.append(line)
    return out


def markdown(spec: dict[str, Any], rows: list[dict[str, Any]], command: str) -> str:
    """The study's table: one line per configuration, accuracies with 95% intervals, FID and model sizes, under the
    commands that made its rows (a row without one: this call's)."""
    lines_in = pooled(rows)
    probes = [p for p in PROBES if any(f"probe/{p}" in line for line in lines_in)]
    base = spec.get("baseline")
    by_seed = any(len(p["overall_by_seed"]) > 1 for p in lines_in)
    head = ["config", "seeds", "U-Net params", "text params", *(NAMES[c] for c in (*CATEGORIES, "overall")),
            *(["overall by seed (p equal)"] if by_seed else []), *([f"overall - {base}"] if base else []),
            "domain FID", "train min", *(f"prefers true {p}" for p in probes)]
    commands = dict.fromkeys(r.get("command") or command for r in rows)  # every call behind the table, in order
    lines = [f"# Study {spec['name']}: {spec.get('section', '')}", "", f"Claim: {spec.get('claim', '')}", "",
             *(f"    {c}" for c in commands), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in lines_in:
        cells = [p["config"], str(p["seeds"]) if p["status"] == "ok" else p["status"],
                 _millions(p["unet_params"]), _millions(p["text_params"])]
        cells += [_interval(p.get(c)) for c in (*CATEGORIES, "overall")]
        cells += [_by_seed(p["overall_by_seed"])] if by_seed else []
        cells += [_signed(versus(p, lines_in, base)) + _runs(p, lines_in, base)] if base else []
        cells += [f"{p['fid']:.1f}" if p["fid"] is not None else "-",
                  f"{p['train_minutes']:.1f}" if p["train_minutes"] is not None else "-"]
        cells += [_interval(p.get(f"probe/{q}")) for q in probes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def versus(line: dict[str, Any], lines: list[dict[str, Any]], baseline: str) -> tuple[float, float, float] | None:
    """The line's overall accuracy minus that of the baseline config at the same step (pooled counts), with its 95%
    interval; None for the baseline itself or where either has no scored seed."""
    other = _baseline_line(line, lines, baseline)
    if other is None or not line["overall_by_seed"] or not other["overall_by_seed"]:
        return None
    return difference_interval(*_pooled_counts(line), *_pooled_counts(other))


def _baseline_line(line: dict[str, Any], lines: list[dict[str, Any]], baseline: str) -> dict[str, Any] | None:
    """The baseline config's line at the same step as this one; None for the baseline itself."""
    step = line.get("step")
    point = baseline if step is None else f"{baseline}@{int(step)}"
    other = next((q for q in lines if q["config"] == point), None)
    return None if other is line else other


def _runs(line: dict[str, Any], lines: list[dict[str, Any]], baseline: str) -> str:
    """' (runs: U of m x n seed pairs above, p)': the exact one-sided rank test of the seeds' overall accuracies
    against the baseline's, where both have two seeds or more (pooled counts count scenes, not training runs)."""
    other = _baseline_line(line, lines, baseline)
    if other is None or min(len(line["overall_by_seed"]), len(other["overall_by_seed"])) < 2:
        return ""
    mine, theirs = ([k / n for _, k, n in q["overall_by_seed"]] for q in (line, other))
    above = sum(mine) / len(mine) >= sum(theirs) / len(theirs)  # test in the direction of the mean difference
    u, p = rank_test_p(mine, theirs) if above else rank_test_p(theirs, mine)
    return f" (runs: {u:g} of {len(mine) * len(theirs)} seed pairs {'above' if above else 'below'}, p {p:.3f})"


def _pooled_counts(line: dict[str, Any]) -> tuple[int, int]:
    """(right, images) of the line's overall accuracy, summed over its seeds."""
    return sum(k for _, k, _ in line["overall_by_seed"]), sum(n for _, _, n in line["overall_by_seed"])


def _by_seed(counts: list[tuple[int, int, int]]) -> str:
    """Each seed's overall accuracy, and the chi-square p that they share one (small: the seeds differ beyond the
    scenes' sampling, and the pooled interval understates the uncertainty)."""
    values = " / ".join(f"{k / n:.3f}" for _, k, n in counts)
    return values + (f" (p {homogeneity_p([(k, n) for _, k, n in counts]):.2f})" if len(counts) > 1 else "")


def _signed(value: tuple[float, float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:+.3f} [{value[1]:+.2f}, {value[2]:+.2f}]"


def _interval(value: tuple[float, float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:.3f} [{value[1]:.2f}, {value[2]:.2f}]"


def _millions(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def plots(spec: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path, scratch: Path) -> list[Path]:
    """The spec's `plot` (one {x, y, group, kind} or a list): plot.png, then plot_<x>.png for the others."""
    cfgs = spec.get("plot") or {}
    cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs)
    paths = []
    for i, cfg in enumerate(cfgs):
        name = "plot.png" if i == 0 else f"plot_{cfg.get('name') or cfg.get('x') or i}.png"
        path = plot(spec["name"], cfg, rows, out_dir / name, scratch)
        paths += [path] if path is not None else []
    return paths


def _pooled_key(y: str) -> str:
    """A pooled line's key for a plot's y: alignment/<category> or probe/<counterfactual> (both with intervals)."""
    key = y.removeprefix("alignment/")
    if key not in (*CATEGORIES, "overall") and key.removeprefix("probe/") not in PROBES:
        raise ValueError(f"plot y must be alignment/<category or overall> or probe/<{'|'.join(PROBES)}> (pooled "
                         f"over seeds, with an interval) unless kind is pareto; got {y!r}")
    return key


def plot(title: str, cfg: dict[str, Any], rows: list[dict[str, Any]], path: Path, scratch: Path) -> Path | None:
    """One plot {x, y, group, kind} of the ok rows. kind pareto: guidance curves (Imagen Fig. A.10); kind scale:
    parameters added against the change in y, this study's curve beside those of the studies in `with` (Fig. 4)."""
    from imagen_lit.eval.plot import draw_curves, save_plot

    x, y = cfg.get("x", "text_params"), cfg.get("y", "alignment/overall")
    if cfg.get("kind") == "scale":
        return scale_plot(title, cfg, rows, path)
    ok = [r for r in rows if r["status"] == "ok" and r.get(x) is not None and r.get(y) is not None]
    if not ok:
        return None
    if cfg.get("kind") == "pareto":
        path.write_bytes(write_pareto(scratch, ok, x, y).read_bytes())  # its TensorBoard copy stays with the runs
        return path
    key = _pooled_key(y)
    curves: dict[str, list[tuple]] = {}
    for p in pooled(ok):
        row = next(r for r in ok if r["point"] == p["config"])
        value = p[x] if p.get(x) is not None else row[x]
        if key in p:
            curves.setdefault(str(row.get(cfg.get("group", ""), title)), []).append(
                (p["config"], float(value), *p[key]))
    curves = {g: sorted(pts, key=lambda q: q[1]) for g, pts in curves.items()}
    array = draw_curves(curves, x_label=x, y_label=f"{y} (95% Wilson)", title=title)
    return save_plot(array, path)


def scale_plot(title: str, cfg: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Parameters added (U-Net + text, millions, over each study's smallest configuration) against the change in y,
    one curve per study: this one and each in cfg['with'] (read from its summary.csv beside this study's folder).
    Configurations in cfg['exclude'] (e.g. a random-weights control of the same size) are left out."""
    from imagen_lit.eval.plot import draw_curves, save_plot

    key = _pooled_key(cfg.get("y", "alignment/overall"))
    studies = {title: rows}
    for other in cfg.get("with", []):
        summary = path.parent.parent / other / "summary.csv"
        if summary.is_file():
            studies[other] = read_summary(summary)
    curves: dict[str, list[tuple]] = {}
    for name, study_rows in studies.items():
        lines = [p for p in pooled([r for r in study_rows if r.get("status") == "ok"])
                 if key in p and p["config"] not in cfg.get("exclude", []) and p["unet_params"] is not None]
        if not lines:
            continue
        size = {p["config"]: p["unet_params"] + p["text_params"] for p in lines}
        base = min(lines, key=lambda p: size[p["config"]])
        curves[name] = sorted(((p["config"], (size[p["config"]] - size[base["config"]]) / 1e6,
                                p[key][0] - base[key][0]) for p in lines), key=lambda q: q[1])
    if not curves:
        return None
    array = draw_curves(curves, x_label="parameters added (millions, U-Net + text encoder)",
                        y_label=f"change in {cfg.get('y', 'alignment/overall')}", title="Imagen Fig. 4")
    return save_plot(array, path)


def read_summary(path: Path) -> list[dict[str, Any]]:
    """A study's summary.csv as rows, numbers as numbers."""
    with Path(path).open(newline="") as f:
        return [_typed(r) for r in csv.DictReader(f)]


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """A summary.csv row with its numbers as numbers (empty cells as None)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = float(v) if v not in ("", None) else None
        except ValueError:
            out[k] = v
    return out
