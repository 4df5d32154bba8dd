"""Integration on the real Qwen2.5-Coder pair (pulled into the cache on first use).

float32 target: speckv's greedy output must equal transformers' greedy output token for token.
The draft runs in bfloat16: it only proposes, so exactness depends on the target alone.
"""

import pytest
import torch

import speckv
from speckv.data.prompts import spec_bench
from speckv.errors import SpeckvError
from speckv.models import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

pytestmark = pytest.mark.qwen


@pytest.fixture(scope="module")
def qwen_fp32():
    return speckv.Decoder(load_model(DEFAULT_TARGET, "float32"), load_model(DEFAULT_DRAFT, "bfloat16"))


def test_greedy_equals_transformers_generate(qwen_fp32):
    dec = qwen_fp32
    prompts = spec_bench(["coding", "math_reasoning", "writing"], 1)
    for p in prompts:
        ids = dec.encode(p.text)
        x = torch.tensor([ids])
        with torch.inference_mode():
            ref = dec.target.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=24)
        ref = ref[0, len(ids):].tolist()
        for controller in ("fixed:4", "fixed:8"):
            result = dec.generate(ids, controller=controller, max_new_tokens=24)
            assert result.token_ids == ref, (p.id, controller)
            assert result.stats.mean_accepted > 0.5  # the pair really speculates


def test_stream_matches_generate_text(qwen_fp32):
    pieces = list(qwen_fp32.stream("Write a Python function that reverses a string.", max_new_tokens=20))
    result = qwen_fp32.generate("Write a Python function that reverses a string.", max_new_tokens=20)
    assert len(pieces) > 1 and "".join(pieces) == result.text


def test_stop_string_truncates(qwen_fp32):
    result = qwen_fp32.generate("Count from 1 to 20, separated by commas.", max_new_tokens=40, stop=["5"])
    assert result.finish_reason == "stop" and "5" not in result.text and result.text


def test_different_tokenizers_are_refused():
    with pytest.raises(SpeckvError, match="different tokenizers"):
        speckv.load(target="qwen2.5-coder-0.5b-instruct", draft="smollm2-135m-instruct", dtype="float32")
