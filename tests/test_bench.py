"""Benchmark aggregation: tokens/s is total tokens over total time, ratios against the baseline."""

import json

from speckv.bench.side_by_side import Row, hf_settings, summarize


def test_summary_ratios_and_strict_json():
    rows = [
        Row("autoregressive", "1", 100, 20.0, 0.0, 0.01, []),
        Row("autoregressive", "2", 100, 30.0, 0.0, 0.01, []),
        Row("fixed:4", "1", 100, 10.0, 3.0, 0.02, []),
        Row("fixed:4", "2", 100, 15.0, 2.0, 0.02, []),
        Row("hf-assisted:4", "1", 100, 12.0, None, None, []),
        Row("hf-assisted:4", "2", 100, 13.0, None, None, []),
    ]
    out = {s["method"]: s for s in summarize(rows, ["autoregressive", "fixed:4", "hf-assisted:4"], "autoregressive")}
    assert out["autoregressive"]["tokens_per_s"] == 4.0 and out["autoregressive"]["speedup"] == 1.0
    assert out["fixed:4"]["tokens_per_s"] == 8.0 and out["fixed:4"]["speedup"] == 2.0
    assert out["fixed:4"]["mean_accepted"] == 2.5
    assert out["hf-assisted:4"]["mean_accepted"] is None
    json.dumps(list(out.values()), allow_nan=False)


def test_hf_settings_are_pinned():
    assert hf_settings("hf-assisted")["num_assistant_tokens"] == 20
    four = hf_settings("hf-assisted:4")
    assert four == {"num_assistant_tokens": 4, "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}


def test_hf_lookup_settings_are_pinned():
    assert hf_settings("hf-lookup") == {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 2}
    assert hf_settings("hf-lookup:4")["prompt_lookup_num_tokens"] == 4
