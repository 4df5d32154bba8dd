"""Paired bootstrap over prompts (speckv.measure.stats) and the evaluation page built on it."""

import numpy as np
import pandas as pd
import pytest

from speckv.errors import SpeckvError
from speckv.measure.stats import aggregate_tps, comparison_table, paired_ratio_ci
from speckv.report import eval_page


def runs_for(tps: dict[str, np.ndarray], tokens: np.ndarray, **extra) -> pd.DataFrame:
    """One row per (controller, prompt): `tokens[i]` new tokens at `tps[controller][i]` tokens/s."""
    return pd.DataFrame([
        {"controller": c, "prompt_id": f"p{i}", "new_tokens": int(n), "wall_s": n / r, **extra}
        for c, rates in tps.items() for i, (n, r) in enumerate(zip(tokens, rates))
    ])


def test_aggregate_tps_is_a_ratio_of_sums():
    runs = pd.DataFrame({"new_tokens": [10, 100], "wall_s": [1.0, 100.0]})
    assert aggregate_tps(runs) == pytest.approx(110 / 101)  # mean of ratios would be 5.5


def test_constant_speedup_gives_that_ratio_and_a_degenerate_ci():
    rng = np.random.default_rng(1)
    base = rng.uniform(5, 50, 30)
    ci = paired_ratio_ci(runs_for({"a": 1.2 * base, "b": base}, rng.integers(20, 300, 30)), "a", "b")
    assert ci.n_prompts == 30
    assert abs(ci.ratio - 1.2) < 1e-9 and abs(ci.low - 1.2) < 1e-9 and abs(ci.high - 1.2) < 1e-9


def test_noisy_speedup_ci_covers_truth_and_excludes_one():
    rng = np.random.default_rng(2)
    base = rng.lognormal(3, 0.5, 40)
    runs = runs_for({"a": 1.3 * base * rng.lognormal(0, 0.1, 40), "b": base}, rng.integers(50, 400, 40))
    ci = paired_ratio_ci(runs, "a", "b")
    assert ci.low < 1.3 < ci.high and ci.low > 1.0 and ci.low <= ci.ratio <= ci.high


def test_identical_throughput_gives_ratio_one():
    rng = np.random.default_rng(3)
    base = rng.lognormal(3, 0.5, 20)
    ci = paired_ratio_ci(runs_for({"a": base, "b": base}, rng.integers(50, 400, 20)), "a", "b")
    assert (ci.ratio, ci.low, ci.high) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)


def test_pairing_removes_prompt_to_prompt_variation():
    rng = np.random.default_rng(4)
    base = 10 ** rng.uniform(0, 3, 40)  # prompts differ a thousandfold in speed
    tokens = rng.integers(20, 400, 40)
    runs = runs_for({"a": 1.1 * base, "b": base}, tokens)
    ci = paired_ratio_ci(runs, "a", "b")
    assert ci.ratio == pytest.approx(1.1) and ci.high - ci.low < 1e-6
    # the same bootstrap with independent draws for a and b is wide: pairing is what makes it tight
    a, b = runs[runs.controller == "a"], runs[runs.controller == "b"]
    ia, ib = rng.integers(0, 40, (2000, 40)), rng.integers(0, 40, (2000, 40))
    unpaired = (a.new_tokens.to_numpy()[ia].sum(1) / a.wall_s.to_numpy()[ia].sum(1)) / (
        b.new_tokens.to_numpy()[ib].sum(1) / b.wall_s.to_numpy()[ib].sum(1))
    low, high = np.quantile(unpaired, [0.025, 0.975])
    assert high - low > 0.1


def test_errors_for_unknown_controller_and_disjoint_prompts():
    runs = runs_for({"a": np.ones(3), "b": np.ones(3)}, np.full(3, 10))
    with pytest.raises(SpeckvError, match="'nope'"):
        paired_ratio_ci(runs, "a", "nope")
    disjoint = pd.concat([runs[runs.controller == "a"],
                          runs[runs.controller == "b"].assign(prompt_id=lambda d: d.prompt_id + "x")])
    with pytest.raises(SpeckvError, match="share no prompts"):
        paired_ratio_ci(disjoint, "a", "b")


def synthetic_runs(seed: int = 0, prompts: int = 6) -> pd.DataFrame:
    """live and replay x two compressions x two tasks; replay lacks the baseline fixed:4."""
    rng = np.random.default_rng(seed)
    frames = []
    for mode in ("live", "replay"):
        for compression in ("bf16", "int4"):
            for task in ("chat", "code"):
                base = rng.lognormal(3, 0.3, prompts)
                tps = {"fixed:4": base, "adaptive": 1.25 * base, "autoregressive": 0.6 * base}
                if mode == "replay":
                    del tps["fixed:4"]
                frame = runs_for(tps, rng.integers(50, 200, prompts), mode=mode, compression=compression, task=task)
                frames.append(frame.assign(mean_accepted=rng.uniform(0, 4, len(frame))))
    runs = pd.concat(frames, ignore_index=True)
    return runs.assign(tokens_per_s=runs.new_tokens / runs.wall_s, steps=runs.new_tokens // 2, mean_drafted=3.0)


def test_comparison_table_rows_all_task_and_missing_baseline():
    runs = synthetic_runs()
    table = comparison_table(runs, "fixed:4", n_boot=500)
    assert list(table.columns) == ["mode", "compression", "task", "controller", "tokens_per_s", "mean_accepted",
                                   "speedup", "ci_low", "ci_high", "n_prompts"]
    assert len(table) == 2 * 3 * 3 + 2 * 3 * 2  # live: 3 controllers, replay: 2; tasks chat, code, all
    assert set(table.task) == {"all", "chat", "code"}
    assert table.equals(table.sort_values(["mode", "compression", "task", "controller"], ignore_index=True))

    row = table[(table["mode"] == "live") & (table.compression == "int4") & (table.task == "all")].set_index("controller")
    sel = runs[(runs["mode"] == "live") & (runs.compression == "int4") & (runs.controller == "adaptive")]
    assert row.loc["adaptive", "tokens_per_s"] == pytest.approx(aggregate_tps(sel))
    assert row.loc["adaptive", "mean_accepted"] == pytest.approx(sel.mean_accepted.mean())
    assert row.loc["adaptive", "n_prompts"] == 12  # same prompt ids in two tasks are distinct prompts
    assert row.loc["adaptive", "speedup"] == pytest.approx(1.25)
    assert row.loc["fixed:4", ["speedup", "ci_low", "ci_high"]].tolist() == [1.0, 1.0, 1.0]

    replay = table[table["mode"] == "replay"]
    assert replay[["speedup", "ci_low", "ci_high"]].isna().all().all() and replay.tokens_per_s.notna().all()


def test_eval_page_writes_inlined_html_and_pngs(tmp_path):
    runs = synthetic_runs(prompts=3)
    runs.to_parquet(tmp_path / "runs.parquet")
    steps = pd.DataFrame([
        {**r, "step": s, "budget": 4, "drafted": (s + i) % 5, "accepted": (s + i) % 3}
        for i, r in enumerate(runs[["mode", "controller", "compression", "task", "prompt_id"]].to_dict("records"))
        for s in range(4)
    ])
    steps.to_parquet(tmp_path / "steps.parquet")
    out = tmp_path / "page"
    page = eval_page.build(tmp_path, out)
    assert page == out / "eval.html" and "data:image/png;base64" in page.read_text()
    for name in ("policy_comparison", "drafted_per_step", "speedup_ci"):
        assert (out / f"{name}.png").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_eval_page_without_runs_is_refused(tmp_path):
    with pytest.raises(SpeckvError, match="runs.parquet"):
        eval_page.build(tmp_path)


def test_validation_table_compares_replay_with_live():
    from speckv.measure.validate import validation_table

    runs = pd.DataFrame([
        {"mode": m, "compression": "bf16", "controller": "fixed:4", "prompt_id": p, "new_tokens": 100,
         "wall_s": w, **({"identical": True} if m == "live" else {})}
        for m, p, w in [("live", "a", 10.0), ("live", "b", 10.0), ("replay", "a", 9.0), ("replay", "b", 11.0)]
    ])
    step = {"compression": "bf16", "controller": "fixed:4"}
    steps = pd.DataFrame([
        {**step, "mode": "live", "prompt_id": "a", "step": 0, "budget": 4, "drafted": 4, "accepted": 2},
        {**step, "mode": "replay", "prompt_id": "a", "step": 0, "budget": 4, "drafted": 4, "accepted": 2},
        {**step, "mode": "live", "prompt_id": "b", "step": 0, "budget": 4, "drafted": 4, "accepted": 3},
        {**step, "mode": "replay", "prompt_id": "b", "step": 0, "budget": 4, "drafted": 4, "accepted": 1},
    ])
    row = validation_table(runs, steps).iloc[0]
    assert row.steps_equal == 0.5 and row.identical_output == 1.0 and row.n_prompts == 2
    assert row.predicted_over_live == pytest.approx(1.0)  # 200 tokens / 20 s either way


def test_headline_compares_live_focus_with_live_baselines_and_replayed_oracle():
    from speckv.measure.stats import headline

    rows = []
    for p in range(6):
        rows += [{"mode": "live", "compression": "bf16", "controller": "cost-aware", "prompt_id": str(p),
                  "new_tokens": 120, "wall_s": 10.0},
                 {"mode": "live", "compression": "bf16", "controller": "fixed:4", "prompt_id": str(p),
                  "new_tokens": 100, "wall_s": 10.0},
                 {"mode": "replay", "compression": "bf16", "controller": "oracle", "prompt_id": str(p),
                  "new_tokens": 150, "wall_s": 10.0},
                 {"mode": "replay", "compression": "bf16", "controller": "cost-aware", "prompt_id": str(p),
                  "new_tokens": 999, "wall_s": 1.0}]  # replayed rows of the focus must not leak in
    table = headline(pd.DataFrame(rows)).set_index("versus")
    assert set(table.index) == {"fixed:4", "oracle (replay)"}
    assert table.loc["fixed:4", "ratio"] == pytest.approx(1.2)
    assert table.loc["oracle (replay)", "ratio"] == pytest.approx(0.8)


def test_session_cost_refit_predicts_held_out_prompts_where_a_stale_calibration_does_not():
    """Live runs timed by a known cost model; the model from `calibrate` is 25% too fast (the machine
    slowed down since). The leave-one-prompt-out refit recovers the live speed; the stale one does not."""
    from speckv.cost import CostModel
    from speckv.measure.validate import session_cost_table

    true = CostModel((5.0, 60.0, 40.0), (150.0, 4.0, 20.0, 1.0), (0.5, 2.0), (300.0, 500.0))
    stale = CostModel(*(tuple(v * 0.8 for v in terms) for terms in (true.draft, true.verify, true.overhead, true.prefill)))
    rng = np.random.default_rng(0)
    runs, steps = [], []
    for p in range(5):
        prompt_len = 200 + 40 * p
        for controller, k_max in (("fixed:4", 4), ("cost-aware", 8), ("autoregressive", 0)):
            ctx, produced, wall, recs = prompt_len, 0, true.prefill_ms(prompt_len), []
            while produced < 64:
                k = int(rng.integers(0, k_max + 1)) if k_max else 0
                acc = int(rng.integers(0, k + 1))
                rec = {"step": len(recs), "context_len": ctx, "budget": k, "drafted": k, "accepted": acc,
                       "emitted": acc + 1, "draft_ms": true.draft_ms(k, ctx), "verify_ms": true.verify_ms(k + 1, ctx),
                       "control_ms": 0.01}
                wall += rec["draft_ms"] + rec["verify_ms"] + rec["control_ms"] + true.overhead_ms(produced)
                produced += acc + 1
                ctx += acc + 1
                recs.append(rec)
            base = {"compression": "bf16", "controller": controller, "prompt_id": str(p), "task": "code"}
            for mode in ("live", "replay"):
                steps += [{**base, "mode": mode, **r} for r in recs]
                runs.append({**base, "mode": mode, "new_tokens": produced, "wall_s": wall / 1000,
                             "prefill_ms": true.prefill_ms(prompt_len) if mode == "live" else np.nan})
    table = session_cost_table(pd.DataFrame(runs), pd.DataFrame(steps), {"bf16": stale}).set_index("controller")
    assert set(table.index) == {"fixed:4", "cost-aware", "autoregressive"}
    assert (table["n_prompts"] == 5).all()
    assert table["refit_over_live"].to_numpy() == pytest.approx(1.0, rel=1e-6)
    assert table["refit_live_steps"].to_numpy() == pytest.approx(1.0, rel=1e-6)
    assert (table["calibrated_over_live"] > 1.2).all()  # 20% cheaper costs -> 25% more tokens/s predicted


def test_live_summary_reports_rates_ratios_and_agreement():
    from speckv.measure.stats import live_summary

    rows = []
    for i, task in enumerate(("code", "chat", "code", "chat")):
        rows.append({"controller": "autoregressive", "prompt_id": f"p{i}", "task": task, "new_tokens": 10,
                     "wall_s": 2.0, "tokens": [1, 2, 3]})
        rows.append({"controller": "auto", "prompt_id": f"p{i}", "task": task, "new_tokens": 10, "wall_s": 1.0,
                     "tokens": [1, 2, 3] if i else [1, 2, 4]})
    out = live_summary(pd.DataFrame(rows), ["autoregressive", "auto"], [("auto", "autoregressive"), ("x", "auto")])
    assert out["tokens_per_s"] == {"autoregressive": 5.0, "auto": 10.0}
    assert out["per_task"]["chat"]["auto"] == 10.0
    assert out["ratio_ci"] == {"auto / autoregressive": [2.0, 2.0, 2.0]}  # a pair naming a missing method is skipped
    assert out["same_output_as_autoregressive"] == {"autoregressive": 1.0, "auto": 0.75}
