"""Benchmark aggregation: tokens/s is total tokens over total time, ratios against the baseline."""

import json

from speckv.bench.side_by_side import Row, hf_settings, summarize


def test_summary_ratios_and_strict_json():
    rows = [
        Row("autoregressive", "1", 100, 20.0, 0.0, 0.01, [], decode_s=15.0),
        Row("autoregressive", "2", 100, 30.0, 0.0, 0.01, [], decode_s=25.0),
        Row("fixed:4", "1", 100, 10.0, 3.0, 0.02, [], decode_s=5.0),
        Row("fixed:4", "2", 100, 15.0, 2.0, 0.02, [], decode_s=None),
        Row("hf-assisted:4", "1", 100, 12.0, None, None, []),
        Row("hf-assisted:4", "2", 100, 13.0, None, None, []),
    ]
    out = {s["method"]: s for s in summarize(rows, ["autoregressive", "fixed:4", "hf-assisted:4"], "autoregressive")}
    assert out["autoregressive"]["tokens_per_s"] == 4.0 and out["autoregressive"]["speedup"] == 1.0
    assert out["fixed:4"]["tokens_per_s"] == 8.0 and out["fixed:4"]["speedup"] == 2.0
    assert out["fixed:4"]["mean_accepted"] == 2.5
    assert out["hf-assisted:4"]["mean_accepted"] is None
    assert out["autoregressive"]["decode_tokens_per_s"] == 5.0  # 200 tokens / 40 s after the prompts were read
    assert out["fixed:4"]["decode_tokens_per_s"] is None  # one prompt's decode time unknown: no figure, not a partial one
    json.dumps(list(out.values()), allow_nan=False)


def test_hf_settings_are_pinned():
    assert hf_settings("hf-assisted")["num_assistant_tokens"] == 20
    four = hf_settings("hf-assisted:4")
    assert four == {"num_assistant_tokens": 4, "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}


def test_hf_lookup_settings_are_pinned():
    assert hf_settings("hf-lookup") == {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 2}
    assert hf_settings("hf-lookup:4")["prompt_lookup_num_tokens"] == 4


def test_llama_server_peer_reports_its_own_decode_seconds(monkeypatch):
    """A peer's decode time is llama-server's `predicted_ms` (after its prompt reading), its wall
    time the whole round trip; without timings, decode falls back to the round trip."""
    from speckv.bench import llama_server

    peer = object.__new__(llama_server.PeerServer)
    peer.base, peer.log = "http://127.0.0.1:1", "log"
    monkeypatch.setattr(llama_server, "_post", lambda url, body: {"tokens": [5, 6], "timings": {"predicted_ms": 250.0}})
    tokens, wall, decode = peer.complete([1, 2, 3], 2)
    assert tokens == [5, 6] and decode == 0.25 and wall >= 0
    monkeypatch.setattr(llama_server, "_post", lambda url, body: {"tokens": [5]})
    tokens, wall, decode = peer.complete([1, 2, 3], 2)
    assert decode == wall
