"""The study driver: every configuration of every study gets its row; a tiny study trains, scores and reports."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from imagen_lit.study import STUDY_DIR, Runner, load_spec, main, plan, with_recorded
from imagen_lit.study_report import markdown
from imagen_lit.sweep import register_resolvers, write_summary
from tests.conftest import TINY, compose_config
from tests.test_cascade import SR_OVERRIDES
from tests.test_train_sr import SR_TINY

STUDIES = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def without_guard(train: list[str]) -> list[str]:
    """A study's training overrides less its wall-clock guard (trainer.max_time): it only catches a stall."""
    return [o for o in train if not o.startswith("trainer.max_time")]


def run_spec(tmp_path, spec: dict, name: str) -> tuple[int, dict[str, dict], Path, Path]:
    """Write the spec as <name>.yaml, run the driver on it: (exit code, summary rows by job, results, runs)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out, runs = tmp_path / "results", tmp_path / "runs"
    code = main([str(path), "--out", str(out), "--runs", str(runs)])
    with (out / "summary.csv").open() as f:
        return code, {r["job"]: r for r in csv.DictReader(f)}, out, runs


def test_the_paper_studies_exist():
    assert {"encoder_scale", "unet_scale", "guidance", "text_conditioning"} <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_every_configuration_has_its_row(study, tmp_path):
    """Planned before anything runs: one job per config x seed, each composing with train.py's and sample.py's
    real configs (a mistyped override fails here, not an hour into the study), each with its row in summary.csv."""
    register_resolvers()  # as train.py and sample.py do on import
    spec = load_spec(study)
    configs = list(spec.get("configs") or {})
    grid = (spec.get("sweep") or {}).get("evaluate") or {}
    expected = len(configs) + (math.prod(len(v) for v in grid.values()) if grid else 0)
    expected *= len(spec.get("steps") or [None])
    jobs = plan(spec, seeds=[0, 1])
    assert len(jobs) == 2 * expected and len({j.name for j in jobs}) == len(jobs)
    assert {j.config for j in jobs} >= set(configs)
    for train in {tuple(j.train) for j in jobs} | ({tuple(spec["base"])} if spec.get("base") else set()):
        cfg = compose_config("train", tmp_path / "run", list(train))
        unet = instantiate(cfg.unet, text_dim=384)  # the U-Net builds with these overrides
        assert sum(p.numel() for p in unet.parameters()) > 0
    for evaluate in {tuple(j.evaluate) for j in jobs}:
        if spec.get("evaluator") == "cascade":  # options of experiments/cascade_vs_bicubic.py
            assert {o.split("=")[0] for o in evaluate} <= {"aug_level", "num_scenes", "scene_seed", "batch_size"}
        else:
            compose_config("sample", tmp_path / "sample", ["ckpt_path=x.ckpt", "evaluate=true", *evaluate])
    if spec.get("evaluator") == "cascade":  # an SR stage trained without augmentation samples at aug_level 0 only
        for job in jobs:
            level = dict(o.split("=", 1) for o in job.evaluate).get("aug_level", "0.0")
            stage = compose_config("train", tmp_path / "run", job.train).stage
            if not stage.get("noise_aug", True):
                assert level in ("0", "0.0", "bicubic"), f"{job.name}: trained without noise_aug, sampled at {level}"
            elif level != "bicubic":  # a stage trained on U(0, max) is never sampled above max (an error at generate)
                assert float(level) <= stage.max_aug_level, f"{job.name}: sampled at {level} > {stage.max_aug_level}"
    runner = Runner(tmp_path / "runs")
    rows = [runner.row(j) for j in jobs]
    assert all(r["status"] == "missing" for r in rows)  # nothing run yet: reported, not dropped
    with write_summary(tmp_path, rows).open() as f:
        assert [r["job"] for r in csv.DictReader(f)] == [j.name for j in jobs]


def test_runs_shared_by_a_sampling_sweep_are_one_run():
    jobs = plan(load_spec("guidance"))
    assert len(jobs) == 39 and len({j.run for j in jobs}) == 1
    assert len({j.run for j in plan(load_spec("encoder_scale"))}) == 5
    assert len({j.run for j in plan(load_spec("noise_augmentation"))}) == 2  # SR with and without augmentation
    assert len({j.run for j in plan(load_spec("noise_augmentation_world"))}) == 3  # U(0, 1), U(0, 0.1) and none


def test_the_32x32_bed_varies_the_same_encoders_and_widths_at_one_budget():
    """encoder_scale_world is encoder_scale's five encoders on experiment=world's 32x32 bed: the same configs, and
    nothing but the encoder differs between runs (the claim fixes the U-Net and the budget); unet_scale_world varies
    the width on the same bed, its 1x run being (a)'s minilm_l6 run."""
    floor, bed = load_spec("encoder_scale"), load_spec("encoder_scale_world")
    assert {n: c["train"] for n, c in floor["configs"].items()} == {n: c["train"] for n, c in bed["configs"].items()}
    assert not any(o.startswith("data.resolution") for o in bed["train"])
    assert all(o.startswith("text_encoder=") for c in bed["configs"].values() for o in c["train"])
    widths = load_spec("unet_scale_world")  # (b) on (a)'s bed and budget, so Fig. 4's two axes are comparable
    assert without_guard(widths["train"]) == without_guard(bed["train"])
    assert widths["configs"]["width_1x"]["train"] == []


def test_studies_e_and_f_on_the_32x32_bed_vary_only_their_switch(tmp_path):
    """text_conditioning_world is text_conditioning's four switches, efficient_vs_standard_world its two U-Nets, both
    on encoder_scale_world's bed and step budget; (f)'s efficient run composes to the same U-Net as (e)'s concat run
    (experiment=world's own mode), so the two studies can share it."""
    register_resolvers()
    bed = without_guard(load_spec("encoder_scale_world")["train"])
    switches, unets = load_spec("text_conditioning_world"), load_spec("efficient_vs_standard_world")
    floor = load_spec("text_conditioning")["configs"]
    assert {n: c["train"] for n, c in switches["configs"].items()} == {n: c["train"] for n, c in floor.items()}
    for spec in (switches, unets):
        assert without_guard(spec["train"]) == bed
    assert set(unets["configs"]) == set(load_spec("efficient_vs_standard")["configs"])
    assert unets["steps"][-1] == 2500 and unets["configs"]["efficient"]["train"] == []
    concat = [*switches["train"], *switches["configs"]["concat_into_self_attention"]["train"]]
    efficient = [*unets["train"], *unets["configs"]["efficient"]["train"]]
    cfgs = [compose_config("train", tmp_path / "run", without_guard(t)) for t in (concat, efficient)]
    assert cfgs[0].unet == cfgs[1].unet and cfgs[0].stage == cfgs[1].stage and cfgs[0].data == cfgs[1].data


def test_configs_picks_a_subset_and_an_unknown_one_is_a_one_line_error(capsys):
    spec = load_spec("encoder_scale_world")
    jobs = plan(spec, seeds=[1], configs=["minilm_l1", "minilm_l6"])
    assert [j.name for j in jobs] == ["minilm_l6_s1", "minilm_l1_s1"]  # the spec's order
    with pytest.raises(ValueError, match="has no configs \\['minilm_l9'\\]; known: "):
        plan(spec, configs=["minilm_l9"])
    assert main(["encoder_scale_world", "--configs", "minilm_l9", "--dry-run"]) == 2
    assert "known: minilm_l6" in capsys.readouterr().err


def test_recorded_rows_are_kept_when_their_runs_are_not_here(tmp_path):
    """A second seed added on a checkout without the first seed's folders: the recorded seed-0 rows stay, a fresh
    result replaces a recorded one, a recorded row whose overrides changed does not stand in, and rows of configs
    the spec dropped go."""
    spec = load_spec("encoder_scale_world")
    runner = Runner(tmp_path / "runs")
    seed0 = [runner.row(j) for j in plan(spec, seeds=[0])]
    for r, acc in zip(seed0, (0.26, 0.14, 0.18, 0.25, 0.18), strict=True):
        r.update(status="ok", **{"alignment/overall": acc, "alignment/n_images": 300})
    seed0[2]["overrides"] += " stale=1"
    write_summary(tmp_path, [*seed0, {**seed0[0], "job": "gone_s0", "config": "gone", "point": "gone"}])
    fresh = [runner.row(j) for j in plan(spec, seeds=[0, 1], configs=["minilm_l6", "minilm_l1"])]
    assert all(r["status"] == "missing" for r in fresh)
    fresh[0].update(status="ok", **{"alignment/overall": 0.3, "alignment/n_images": 300})  # minilm_l6_s0 rescored
    rows = {r["job"]: r for r in with_recorded(tmp_path / "summary.csv", fresh, spec)}
    assert set(rows) == {f"{c}_s0" for c in spec["configs"]} | {"minilm_l6_s1", "minilm_l1_s1"}
    assert rows["minilm_l6_s0"]["alignment/overall"] == 0.3  # this call's result
    assert rows["minilm_random_s0"]["alignment/overall"] == 0.14 and rows["minilm_random_s0"]["status"] == "ok"
    assert rows["minilm_l1_s0"]["status"] == "missing"  # its recorded row was run with other overrides
    assert rows["minilm_l1_s1"]["status"] == "missing"  # not run yet: reported, not dropped


def test_the_table_names_every_call_behind_its_rows(tmp_path):
    """A seed added by a --configs call: summary.md lists the first call and this one, each once, in order; a row
    recorded without its call falls back to this call's."""
    spec = load_spec("encoder_scale_world")
    runner, first, second = Runner(tmp_path / "runs"), "python -m imagen_lit.study a", "python -m imagen_lit.study b"
    rows = [{**runner.row(j), "status": "ok", "alignment/overall": 0.2, "alignment/n_images": 300,
             "command": first if j.seed == 0 else second} for j in plan(spec, seeds=[0, 1], configs=["minilm_l6"])]
    header = markdown(spec, [*rows, {**rows[0], "command": first}], "ignored").split("|")[0]
    assert [line.strip() for line in header.splitlines() if line.startswith("    ")] == [first, second]
    del rows[1]["command"]
    assert "    this call" in markdown(spec, rows, "this call")


def test_the_table_gives_each_config_against_the_baseline_with_its_interval(tmp_path):
    """The spec's baseline column: pooled counts' difference with Newcombe's interval, '-' on the baseline's own line,
    and a baseline that names no config is a one-line error."""
    spec = load_spec("text_conditioning_world")
    runner = Runner(tmp_path / "runs")
    rows = [{**runner.row(j), "status": "ok", "alignment/overall": acc, "alignment/n_images": 300}
            for j, acc in zip(plan(spec, seeds=[0]), (0.28, 0.19, 0.30, 0.19), strict=True)]
    table = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in markdown(spec, rows, "c").splitlines()}
    column = table["config"].index("overall - mean_pooling_only")
    assert table["separate_cross_attention"][column] == "+0.110 [+0.04, +0.18]"  # 90/300 - 57/300
    assert table["mean_pooling_only"][column] == "-"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**{k: v for k, v in spec.items() if k != "name"}, "baseline": "nope"}))
    with pytest.raises(ValueError, match="baseline 'nope' is not one of its configs"):
        load_spec(str(bad))


def test_the_baseline_column_adds_the_rank_test_over_runs_where_both_have_seeds(tmp_path):
    """Two seeds each: cross-attention's both above pooling's both is 4 of 4 pairs, p = 1 / C(4, 2); a config with
    one seed gets no run-level test."""
    spec = load_spec("text_conditioning_world")
    runner = Runner(tmp_path / "runs")
    accs = {"mean_pooling_only": (0.19, 0.20), "separate_cross_attention": (0.32, 0.30),
            "attention_pooling_only": (0.2,)}
    rows = [{**runner.row(j), "status": "ok", "alignment/overall": accs[j.config][j.seed], "alignment/n_images": 300}
            for j in plan(spec, seeds=[0, 1], configs=list(accs)) if j.seed < len(accs[j.config])]
    table = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in markdown(spec, rows, "c").splitlines()}
    column = table["config"].index("overall - mean_pooling_only")
    assert table["separate_cross_attention"][column].endswith("(runs: 4 of 4 seed pairs above, p 0.167)")
    assert "runs" not in table["attention_pooling_only"][column] and table["mean_pooling_only"][column] == "-"
    rows = [{**r, "alignment/overall": r["alignment/overall"] - 0.2} if "cross" in r["config"] else r for r in rows]
    table = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in markdown(spec, rows, "c").splitlines()}
    assert table["separate_cross_attention"][column].endswith("(runs: 4 of 4 seed pairs below, p 0.167)")


def test_the_table_gives_each_seed_and_whether_the_seeds_agree(tmp_path):
    """With two seeds a column lists each seed's overall accuracy and the chi-square p that they share one."""
    spec = load_spec("text_conditioning_world")
    runner = Runner(tmp_path / "runs")
    rows = [{**runner.row(j), "status": "ok", "alignment/overall": acc, "alignment/n_images": 300}
            for j, acc in zip(plan(spec, seeds=[0, 1], configs=["mean_pooling_only"]), (56 / 300, 81 / 300),
                              strict=True)]
    table = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in markdown(spec, rows, "c").splitlines()}
    column = table["config"].index("overall by seed (p equal)")
    assert table["mean_pooling_only"][column] == "0.187 / 0.270 (p 0.02)"
    assert "overall by seed" not in markdown(spec, rows[:1], "c")  # one seed: no column


def test_unknown_study_is_a_one_line_error(capsys):
    assert main(["no_such_study"]) == 2
    assert "known studies: " in capsys.readouterr().err


def test_tiny_study_end_to_end(tmp_path, shared_data_dir):
    """Two trained configs (one of which fails) and a guidance sweep over a third's run: every row is written,
    the failure with its error, the exit code says not all are ok, and the table and plot exist."""
    spec = {
        "section": "tiny", "claim": "none",
        "train": [*TINY, f"paths.data_dir={shared_data_dir}", "callbacks.sample_grid.every_n_steps=1000"],
        "evaluate": ["eval.num_images=6", "eval.fid.reference.num_images=12", "eval.fid.kid_subset_size=4",
                     "eval.fid.kid_subsets=5", f"eval.fid.cache_dir={tmp_path / 'fid'}", "batch_size=6",
                     f"paths.data_dir={shared_data_dir}"],
        "configs": {"ok": {"train": ["stage.cond_drop_prob=0.1"], "group": "g"},
                    "broken": {"train": ["stage.cond_drop_prob=2.0"], "group": "g"}},
        "sweep": {"evaluate": {"guidance_weight": [1, 3]}},
        "plot": {"x": "guidance_weight", "y": "alignment/overall", "group": "group"},
        "probe": {"num_scenes": 4, "levels": 2},
    }
    code, rows, out, runs = run_spec(tmp_path, spec, "tiny")
    assert code == 1
    assert set(rows) == {"ok_s0", "broken_s0", "guidance_weight=1_s0", "guidance_weight=3_s0"}
    assert rows["broken_s0"]["status"] == "failed" and "cond_drop_prob must be in [0, 1]" in rows["broken_s0"]["error"]
    for job in ("ok_s0", "guidance_weight=1_s0", "guidance_weight=3_s0"):
        row = rows[job]
        assert row["status"] == "ok", row.get("error")
        lo, acc, hi = (float(row[k]) for k in ("alignment/overall_lo", "alignment/overall", "alignment/overall_hi"))
        assert 0.0 <= lo <= acc <= hi <= 1.0 and int(row["unet_params"]) > 0 and int(row["text_params"]) > 0
    assert float(rows["guidance_weight=3_s0"]["guidance_weight"]) == 3.0
    assert 0.0 <= float(rows["ok_s0"]["probe/relation"]) <= 1.0 and int(rows["ok_s0"]["probe/scenes"]) == 4
    assert len(list((runs / "runs").iterdir())) == 3  # ok, broken, and one shared by the sweep
    table = (out / "summary.md").read_text()
    assert "prefers true relation" in table
    assert all(f"| {name} |" in table for name in ("ok", "broken", "guidance_weight=1", "guidance_weight=3"))
    assert (out / "plot.png").is_file()
    # Resumable: a second call reruns nothing that finished, and the failed config is retried (and fails again).
    stamp = (runs / "evals" / "ok_s0" / "metrics.json").stat().st_mtime
    assert run_spec(tmp_path, spec, "tiny")[0] == 1
    assert (runs / "evals" / "ok_s0" / "metrics.json").stat().st_mtime == stamp


def test_a_learning_curve_study_scores_each_step(tmp_path, shared_data_dir):
    """steps: [2, 4] scores both step checkpoints of one run: a row each, minutes increasing, plots per x."""
    spec = {
        "train": [*TINY, f"paths.data_dir={shared_data_dir}", "callbacks.sample_grid.every_n_steps=1000"],
        "evaluate": ["eval.num_images=4", "eval.fid.feature=null", "batch_size=4"],
        "steps": [2, 4], "configs": {"tiny": {"train": []}},
        "plot": [{"x": "step", "group": "config"}, {"x": "train_minutes", "group": "config"}],
    }
    code, by_job, out, _ = run_spec(tmp_path, spec, "curve")
    rows = list(by_job.values())
    assert code == 0
    assert [r["job"] for r in rows] == ["tiny_s0_step2", "tiny_s0_step4"]
    assert 0 <= float(rows[0]["train_minutes"]) <= float(rows[1]["train_minutes"])
    assert (out / "plot.png").is_file() and (out / "plot_train_minutes.png").is_file()
    assert "| tiny@2 |" in (out / "summary.md").read_text()


def test_a_cascade_study_scores_sr_stages_on_the_base_samples(tmp_path, shared_data_dir):
    """evaluator cascade: one base run, the SR run shared by its aug levels, bicubic as its own row at the SR size."""
    data = f"paths.data_dir={shared_data_dir}"
    sr = [*SR_TINY, *SR_OVERRIDES, data]
    spec = {"base": [*TINY, data, "callbacks.sample_grid.every_n_steps=1000"], "evaluator": "cascade",
            "evaluate": ["num_scenes=4", "batch_size=4"],
            "configs": {"on_0.0": {"train": sr, "evaluate": ["aug_level=0.0"], "group": "on"},
                        "on_0.1": {"train": sr, "evaluate": ["aug_level=0.1"], "group": "on"},
                        "bicubic": {"train": sr, "evaluate": ["aug_level=bicubic"], "group": "bicubic"}},
            "plot": {"x": "fidelity/domain_fid", "group": "group"}}
    code, rows, out, runs = run_spec(tmp_path, spec, "cascade")
    assert code == 0
    assert set(rows) == {"on_0.0_s0", "on_0.1_s0", "bicubic_s0"}
    assert sorted(p.name for p in (runs / "runs").iterdir()) == ["base_s0", "on_0.0_s0"]
    assert rows["bicubic_s0"]["method"].startswith("bicubic(") and rows["on_0.1_s0"]["aug_level"] == "0.1"
    for row in rows.values():
        assert int(row["size"]) == 32 and float(row["fidelity/domain_fid"]) >= 0
        assert 0 <= float(row["alignment/overall_lo"]) <= float(row["alignment/overall"]) <= 1
    assert (out / "plot.png").is_file()


def test_scale_plot_puts_two_studies_on_one_axis(tmp_path):
    """kind scale: parameters added against the change in accuracy, this study beside another's summary.csv."""
    from imagen_lit.study_report import plot

    def rows(configs):
        return [{"job": f"{c}_s0", "overrides": "", "status": "ok", "config": c, "point": c, "seed": 0,
                 "alignment/overall": acc, "alignment/n_images": 100, "unet_params": unet, "text_params": text}
                for c, acc, unet, text in configs]

    (tmp_path / "enc").mkdir()
    write_summary(tmp_path / "enc", rows([("l1", 0.1, 5e6, 1e6), ("l6", 0.3, 5e6, 6e6), ("random", 0.0, 5e6, 6e6)]))
    (tmp_path / "unet").mkdir()
    path = plot("unet", {"kind": "scale", "with": ["enc"], "exclude": ["random"]},
                rows([("small", 0.1, 2e6, 6e6), ("big", 0.15, 8e6, 6e6)]), tmp_path / "unet" / "scale.png", tmp_path)
    assert path is not None and path.stat().st_size > 0
    with pytest.raises(ValueError, match="plot y must be"):
        plot("unet", {"kind": "scale", "y": "alignment/fid"}, [], tmp_path / "x.png", tmp_path)
