"""ControllerSpec: the one parser of `NAME[:ARGS]`; and what importing the decoding path pulls in."""

import subprocess
import sys
from pathlib import Path

import pytest

from speckv.control import ControllerSpec, make_controller
from speckv.control.spec import MAX_GAMMA
from speckv.errors import SpeckvError

# text -> (canonical text, name, gamma, p_min, artifact)
FORMS = {
    "auto": ("auto", "auto", None, None, None),
    "auto:": ("auto", "auto", None, None, None),
    "autoregressive": ("autoregressive", "autoregressive", None, None, None),
    "fixed:4": ("fixed:4", "fixed", 4, None, None),
    " fixed:04 ": ("fixed:4", "fixed", 4, None, None),
    f"fixed:{MAX_GAMMA}": (f"fixed:{MAX_GAMMA}", "fixed", MAX_GAMMA, None, None),
    "hf-heuristic": ("hf-heuristic:5", "hf-heuristic", 5, None, None),
    "hf-heuristic:7": ("hf-heuristic:7", "hf-heuristic", 7, None, None),
    "hf-confidence": ("hf-confidence:20", "hf-confidence", 20, None, None),
    "hf-confidence:16": ("hf-confidence:16", "hf-confidence", 16, None, None),
    "p-min": ("p-min:16:0.75", "p-min", 16, 0.75, None),
    "p-min:8": ("p-min:8:0.75", "p-min", 8, 0.75, None),
    "p-min:16:0.5": ("p-min:16:0.5", "p-min", 16, 0.5, None),
    "p-min::0.9": ("p-min:16:0.9", "p-min", 16, 0.9, None),
    "p-min:6:1": ("p-min:6:1", "p-min", 6, 1.0, None),
    "p-min:6:0.123456789": ("p-min:6:0.123456789", "p-min", 6, 0.123456789, None),
    "cost-aware": ("cost-aware", "cost-aware", None, None, None),
    "cost-aware:arts/c.json": ("cost-aware:arts/c.json", "cost-aware", None, None, Path("arts/c.json")),
    "speckv": ("speckv", "speckv", None, None, None),
    "speckv:/tmp/a:b.json": ("speckv:/tmp/a:b.json", "speckv", None, None, Path("/tmp/a:b.json")),
}


@pytest.mark.parametrize("text", FORMS)
def test_parse_and_round_trip(text):
    canonical, name, gamma, p_min, artifact = FORMS[text]
    spec = ControllerSpec.parse(text)
    assert (spec.name, spec.gamma, spec.p_min, spec.artifact) == (name, gamma, p_min, artifact)
    assert str(spec) == canonical
    assert ControllerSpec.parse(str(spec)) == spec
    assert ControllerSpec.parse(spec) is spec  # a parsed spec passes through


def test_defaults_make_equal_specs():
    assert ControllerSpec.parse("p-min") == ControllerSpec.parse("p-min:16:0.75") == ControllerSpec("p-min")
    assert ControllerSpec("fixed", gamma=4) == ControllerSpec.parse("fixed:4")
    assert ControllerSpec.parse("cost-aware") != ControllerSpec.parse("cost-aware:x.json")


@pytest.mark.parametrize("text,canonical,gamma", [("hf-assisted", "hf-assisted", None), ("hf-assisted:4", "hf-assisted:4", 4),
                                                  ("hf-assisted:", "hf-assisted", None), ("hf-lookup", "hf-lookup", None),
                                                  ("hf-lookup:10", "hf-lookup:10", 10)])
def test_hf_assisted_is_a_method_only_where_allowed(text, canonical, gamma):
    spec = ControllerSpec.parse(text, allow_external=True)
    assert spec.gamma == gamma and str(spec) == canonical  # no count: transformers' defaults, not hf-assisted:20
    assert ControllerSpec.parse(str(spec), allow_external=True) == spec
    for bad in (text, spec):
        with pytest.raises(SpeckvError, match=f"unknown controller '{spec.name}"):
            ControllerSpec.parse(bad)
    with pytest.raises(SpeckvError, match="unknown controller"):
        make_controller(spec)


def test_oracle_is_replay_only():
    spec = ControllerSpec.parse("oracle", allow_replay_only=True)
    assert str(spec) == "oracle" and spec.replay_only
    for parse in (ControllerSpec.parse, make_controller):
        with pytest.raises(SpeckvError, match="knows the future"):
            parse("oracle")
    with pytest.raises(SpeckvError, match="takes no argument"):  # the argument is checked first, as before
        ControllerSpec.parse("oracle:3")


@pytest.mark.parametrize("text", ["autoregressive", "auto", "fixed:2", "hf-heuristic", "hf-confidence:3", "p-min:4:0.5",
                                  "cost-aware", "speckv", "oracle", "hf-assisted", "hf-assisted:3", "hf-lookup:5"])
def test_flags(text):
    spec = ControllerSpec.parse(text, allow_replay_only=True, allow_external=True)
    assert spec.uses_draft == (text not in ("autoregressive", "hf-lookup:5"))  # transformers' lookup needs no draft
    assert spec.replay_only == (text == "oracle")
    assert spec.external == text.startswith(("hf-assisted", "hf-lookup"))
    assert spec.needs_artifact == (text in ("cost-aware", "speckv"))
    if not (spec.replay_only or spec.external or spec.needs_artifact):
        assert make_controller(spec).uses_draft == spec.uses_draft  # the flag agrees with what is built


@pytest.mark.parametrize("text,msg", [
    ("fixed:0", "controller fixed: 0 is out of range [1, 32]"), ("fixed:33", "out of range"),
    ("fixed:x", "controller fixed: 'x' is not an integer"), ("fixed", "controller fixed needs a gamma, e.g. fixed:4"),
    ("fixed:", "needs a gamma"), ("hf-heuristic:0", "out of range"), ("hf-confidence:99", "out of range"),
    ("p-min:0", "out of range"), ("p-min:4:x", "controller p-min: 'x' is not a number"),
    ("p-min:4:1.5", "controller p-min: probability 1.5 is out of [0, 1]"), ("p-min:4:nan", "out of"),
    ("p-min:4:0.5:1", "not a number"), ("auto:3", "controller auto takes no argument"),
    ("autoregressive:1", "controller autoregressive takes no argument"),
    ("nope", "unknown controller 'nope'; available: auto, fixed:N"), ("", "unknown controller ''"),
    ("Fixed:4", "unknown controller"), ("hf-assistedX", "unknown controller"),
])
def test_errors(text, msg):
    with pytest.raises(SpeckvError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        ControllerSpec.parse(text)
    with pytest.raises(SpeckvError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        make_controller(text)


@pytest.mark.parametrize("text", ["hf-assisted:0", "hf-assisted:33", "hf-assisted:x", "hf-assisted:-1", "hf-assisted: 4"])
def test_hf_assisted_errors(text):
    with pytest.raises(SpeckvError, match=rf"unknown method '{text}': hf-assisted takes an optional token count in \[1, 32\]"):
        ControllerSpec.parse(text, allow_external=True)


def test_errors_list_methods_where_allowed():
    with pytest.raises(SpeckvError, match=r"hf-assisted\[:N\]"):
        ControllerSpec.parse("nope", allow_external=True)
    with pytest.raises(SpeckvError) as exc:
        ControllerSpec.parse("nope")
    assert "hf-assisted" not in str(exc.value)


@pytest.mark.parametrize("kwargs,msg", [
    ({"name": "nope"}, "unknown controller"), ({"name": "fixed"}, "needs a gamma"),
    ({"name": "fixed", "gamma": 0}, "out of range"), ({"name": "fixed", "gamma": True}, "not an integer"),
    ({"name": "fixed", "gamma": 4, "p_min": 0.5}, "takes only gamma"), ({"name": "auto", "gamma": 4}, "takes no argument"),
    ({"name": "p-min", "p_min": 2.0}, "out of"), ({"name": "cost-aware", "gamma": 4}, "takes only artifact"),
    ({"name": "hf-assisted", "gamma": 40}, "hf-assisted takes an optional token count"),
])
def test_direct_construction_is_validated(kwargs, msg):
    with pytest.raises(SpeckvError, match=msg):
        ControllerSpec(**kwargs)


def test_non_string_spec():
    with pytest.raises(SpeckvError, match="controller must be a spec"):
        ControllerSpec.parse(4)


def test_make_controller_builds_from_the_parsed_spec():
    assert make_controller("fixed:4").name == "fixed:4"
    assert make_controller(ControllerSpec("fixed", gamma=6)).gamma == 6
    p = make_controller("p-min:8:0.5")
    assert (p.n_max, p.p_min) == (8, 0.5)
    assert make_controller("hf-heuristic").first == 5 and make_controller("hf-confidence").gamma == 20
    assert make_controller("auto").name == "auto"
    with pytest.raises(SpeckvError, match="needs a trained artifact"):
        make_controller("cost-aware")  # no setup: nothing to look up
    with pytest.raises(SpeckvError, match="no such controller artifact"):
        make_controller("speckv:/nonexistent/a.json")


def _modules_after(*imports: str) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in imports) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_decoding_path_imports_no_scikit_learn():
    """Fitting (speckv train, calibrate) needs scikit-learn; loading and decoding must not."""
    loaded = _modules_after("speckv", "speckv.api", "speckv.engine", "speckv.control", "speckv.control.spec")
    assert "speckv.control" in loaded
    assert not {m for m in loaded if m == "sklearn" or m.startswith("sklearn.")}
    assert "speckv.control.train" not in loaded


def test_the_engine_imports_no_measurement_benchmark_or_report_code():
    """Importing speckv.engine runs speckv/__init__ (the API, the controllers): still nothing of
    profiling, traces, replay, statistics, benchmarks or reports."""
    loaded = _modules_after("speckv.engine")
    assert "speckv.engine" in loaded
    ours = {m for m in loaded if m.startswith(("speckv.measure", "speckv.bench", "speckv.report"))}
    # The cost model is a run-time input of the default controller (auto -> CostAware predicts step
    # times with it): it lives at the bottom (speckv.cost, beside speckv.records), not in measure/.
    assert not ours, sorted(ours)
