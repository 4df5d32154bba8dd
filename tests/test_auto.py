"""`auto` out of the box: the drafter, the draft's compression and the controller's prices are
chosen for the loaded pair, from artifacts shipped in the package and a cost probe of this machine."""

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

import speckv
from speckv.control import cost_path, make_controller
from speckv.control.artifact import Setup, load_artifact, shipped_path
from speckv.control.cost_aware import FEATURES, LookupAcceptance
from speckv.errors import SpeckvError
from speckv.measure.probe import probe
from speckv.models.load import LoadedModel

from conftest import CharTokenizer

BUILTIN = Setup("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "bf16", "nf4", "cpu")


@pytest.mark.parametrize("level", ["bf16", "int8", "nf4"])
@pytest.mark.parametrize("draft_level", ["bf16", "nf4"])
def test_auto_uses_the_shipped_artifact_for_the_builtin_pair(level, draft_level, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECKV_HOME", str(tmp_path))  # nothing trained or calibrated here
    setup = replace(BUILTIN, compression=level, draft_compression=draft_level)
    art = load_artifact(shipped_path("cost-aware", setup), "cost-aware", FEATURES, setup)
    auto = make_controller("auto", setup)
    assert auto.name == "auto" and auto.acceptance.weights == tuple(art.params["weights"])
    assert auto.lookup.weights == tuple(art.params["lookup_weights"]) != LookupAcceptance().weights
    assert auto.cost.verify == tuple(art.params["cost"]["verify"])  # no local costs yet: the shipped ones


def test_lookup_weights_over_other_features_are_not_used(tmp_path):
    """An artifact trained before lookup's features changed keeps its draft model, but its lookup
    weights (fitted over other features) give way to the built-in ones, never misread."""
    path = shipped_path("cost-aware", BUILTIN)
    data = json.loads(path.read_text())
    current = make_controller(f"cost-aware:{path}", BUILTIN)
    assert current.lookup.weights == tuple(data["params"]["lookup_weights"])
    data["params"]["lookup_weights"] = data["params"]["lookup_weights"][:6]
    del data["params"]["lookup_features"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = make_controller(f"cost-aware:{tmp_path / 'old.json'}", BUILTIN)
    assert old.lookup.weights == LookupAcceptance().weights and old.acceptance == current.acceptance
    with pytest.raises(SpeckvError, match="lookup acceptance needs 8 weights"):
        LookupAcceptance(tuple(data["params"]["lookup_weights"]))  # never zipped short


def test_shipped_artifacts_are_refused_for_another_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECKV_HOME", str(tmp_path))
    other = replace(BUILTIN, draft="smollm2-135m-instruct")
    with pytest.raises(SpeckvError, match="trained for another setup"):
        make_controller(f"cost-aware:{shipped_path('cost-aware', BUILTIN)}", other)
    assert make_controller("auto", other).acceptance != make_controller("auto", BUILTIN).acceptance  # untrained
    for path in shipped_path("cost-aware", BUILTIN).parent.glob("*.json"):
        data = json.loads(path.read_text())
        assert data["version"] == 1 and data["trained_on"]["prompts"]  # versioned, and says what it saw


def test_probe_measures_both_models(tiny_pair):
    cost = probe(tiny_pair[0], tiny_pair[1], {"what": "tiny"})
    assert cost.verify[0] > 0 and cost.draft[1] > 0 and cost.meta["calibrated"] == "probe"
    line = replace(cost, verify_shape=())  # tiny models: per-n residuals are timing noise
    assert cost.lookup_ms(4) > 0 and line.verify_ms(9, 300) > line.verify_ms(1, 300)
    assert len(cost.verify_shape) == 17  # every verification a 16-token draft asks for, measured
    assert probe(tiny_pair[0], None).draft == (0.0, 0.0, 0.0)


def test_load_probes_once_and_auto_prices_with_it(tiny_pair, tmp_path, monkeypatch, capsys):
    import speckv.api as api
    import speckv.models.draft as draft_module

    monkeypatch.setenv("SPECKV_HOME", str(tmp_path))
    models = {"t": tiny_pair[0], "d": tiny_pair[1]}
    levels = []

    def fake_load(name, level, device, backend):
        assert backend == "torch"
        levels.append(level)
        # (a copy: at the default draft level load_draft makes the head int8 in place, and tiny_pair is shared)
        return LoadedModel(name, Path("."), copy.deepcopy(models[name]), CharTokenizer(), level)

    monkeypatch.setattr(api, "load_model", fake_load)
    monkeypatch.setattr(draft_module, "load_model", fake_load)
    dec = speckv.load("t", "d", dtype="float32", backend="torch")
    assert "timing this machine's forwards" in capsys.readouterr().err
    assert str(dec.drafter) == "hybrid:3:1" and dec.controller.cost.meta["calibrated"] == "probe"
    speckv.load("t", "d", dtype="float32", backend="torch")
    assert "timing" not in capsys.readouterr().err  # cached for the setup
    # a file from an older probe (no per-n shape) is measured again; a calibrated one is kept
    path = cost_path(dec.setup)
    old = json.loads(path.read_text())
    old["meta"].pop("probe_version")
    old["verify_shape"] = []
    path.write_text(json.dumps(old))
    again = speckv.load("t", "d", dtype="float32", backend="torch")
    assert "timing this machine's forwards" in capsys.readouterr().err
    assert len(again.controller.cost.verify_shape) == 17
    old["meta"]["calibrated"] = "live runs"
    path.write_text(json.dumps(old))
    kept = speckv.load("t", "d", dtype="float32", backend="torch")
    assert "timing" not in capsys.readouterr().err and kept.controller.cost.verify_shape == ()
    assert dec.generate([1, 2, 3, 1, 2, 3], max_new_tokens=20).token_ids == \
        dec.generate([1, 2, 3, 1, 2, 3], max_new_tokens=20, controller="autoregressive").token_ids
    from speckv.models import cpu_kernels

    for fast, want in ((True, "nf4"), (False, "bf16")):
        levels.clear()
        monkeypatch.setattr(cpu_kernels, "nf4_pays", lambda fast=fast: fast)
        speckv.load("t", "d", backend="torch")  # bf16 on CPU: the draft at NF4 where NF4 runs fast
        assert levels == ["bf16", want]


def test_default_draft_level(monkeypatch):
    from speckv.api import default_draft_level
    from speckv.models import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "nf4_pays", lambda: True)
    assert default_draft_level("bfloat16", "cpu") == "nf4"
    assert default_draft_level("float32", "cpu") == "float32"  # exactness runs keep fp32 throughout
    monkeypatch.setattr(cpu_kernels, "nf4_pays", lambda: False)  # bitsandbytes' slow fallback (no AVX-512 BF16)
    assert default_draft_level("bfloat16", "cpu") == "bfloat16"


@pytest.mark.parametrize("args,message", [
    (["--drafter", "tree"], "unknown drafter"),
    (["--drafter", "hybrid:0"], "n-gram"),
    (["--draft-compression", "int3"], "unknown compression"),
    (["--draft", "smollm2-135m-instruct", "--target", "smollm2-135m-instruct", "--draft-vocab", "999999"],
     "larger than the model's"),
    (["--drafter", "lookup", "--draft-vocab", "100"], "loads no draft model"),
])
def test_bad_drafter_options_fail_before_loading(cli, monkeypatch, args, message):
    import speckv.api as api
    import speckv.models.draft as draft_module

    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(draft_module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, out, err = cli("generate", "hi", *args)
    assert code == 2 and err.startswith("speckv: error:") and message in err and len(err.strip().splitlines()) == 1
