"""The study driver's report: one line per configuration pooled over seeds with 95% Wilson intervals, the markdown
table, and the plots (imagen_lit.study writes them next to summary.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagen_lit.eval.compositional import CATEGORIES
from imagen_lit.eval.stats import wilson_interval
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
    """The study's table: one line per configuration, accuracies with 95% intervals, FID and model sizes."""
    lines_in = pooled(rows)
    probes = [p for p in PROBES if any(f"probe/{p}" in line for line in lines_in)]
    head = ["config", "seeds", "U-Net params", "text params", *(NAMES[c] for c in (*CATEGORIES, "overall")),
            "domain FID", "train min", *(f"prefers true {p}" for p in probes)]
    lines = [f"# Study {spec['name']}: {spec.get('section', '')}", "", f"Claim: {spec.get('claim', '')}", "",
             f"    {command}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in lines_in:
        cells = [p["config"], str(p["seeds"]) if p["status"] == "ok" else p["status"],
                 _millions(p["unet_params"]), _millions(p["text_params"])]
        cells += [_interval(p.get(c)) for c in (*CATEGORIES, "overall")]
        cells += [f"{p['fid']:.1f}" if p["fid"] is not None else "-",
                  f"{p['train_minutes']:.1f}" if p["train_minutes"] is not None else "-"]
        cells += [_interval(p.get(f"probe/{q}")) for q in probes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
        name = "plot.png" if i == 0 else f"plot_{cfg.get('x', i)}.png"
        path = plot(spec["name"], cfg, rows, out_dir / name, scratch)
        paths += [path] if path is not None else []
    return paths


def plot(title: str, cfg: dict[str, Any], rows: list[dict[str, Any]], path: Path, scratch: Path) -> Path | None:
    """One plot {x, y, group, kind} of the ok rows; kind pareto draws guidance curves (Imagen Fig. A.10)."""
    from imagen_lit.eval.plot import draw_curves, save_plot

    x, y = cfg.get("x", "text_params"), cfg.get("y", "alignment/overall")
    ok = [r for r in rows if r["status"] == "ok" and r.get(x) is not None and r.get(y) is not None]
    if not ok:
        return None
    if cfg.get("kind") == "pareto":
        path.write_bytes(write_pareto(scratch, ok, x, y).read_bytes())  # its TensorBoard copy stays with the runs
        return path
    if y != "alignment/overall":
        raise ValueError(f"plot y must be alignment/overall (pooled over seeds, with its interval) unless kind is "
                         f"pareto; got {y!r}")
    curves: dict[str, list[tuple]] = {}
    for p in pooled(ok):
        row = next(r for r in ok if r["point"] == p["config"])
        value = p[x] if p.get(x) is not None else row[x]
        curves.setdefault(str(row.get(cfg.get("group", ""), title)), []).append(
            (p["config"], float(value), *p["overall"]))
    curves = {g: sorted(pts, key=lambda q: q[1]) for g, pts in curves.items()}
    array = draw_curves(curves, x_label=x, y_label=f"{y} (95% Wilson)", title=title)
    return save_plot(array, path)
