"""The evaluation pipeline end to end on SmolLM2 (draft nf4, target bf16): trace, calibrate,
train, eval; artifacts refused for another setup; the prompt split never leaks."""

import json
import shutil

import pandas as pd

import speckv.control.artifact as artifact
from speckv.data.tasks import split

SMOL = "smollm2-135m-instruct"



def test_split_is_by_prompt_and_deterministic():
    for task in ("code", "math", "chat", "summarization"):
        train, test = split(task, 6, 4, seed=0)
        assert len(train) == 6 and len(test) == 4
        assert not {p.id for p in train} & {p.id for p in test}
        assert [p.id for p in split(task, 6, 4, seed=0)[1]] == [p.id for p in test]


def test_pipeline(cli, monkeypatch, tmp_path):
    monkeypatch.setattr(artifact, "cache_home", lambda: tmp_path / "cache")
    out = tmp_path / "eval"
    code, _, err = cli("trace", "--out", str(out), "--tasks", "code,chat", "--compression", "bf16",
                       "--draft-compression", "nf4", "--train-per-task", "2", "--test-per-task", "1",
                       "--max-new-tokens", "16", "--depth", "7", "--draft", SMOL, "--target", SMOL)
    assert code == 0, err
    assert len(list((out / "traces" / "train" / "bf16").glob("*.parquet"))) == 4
    assert len(list((out / "traces" / "test" / "bf16").glob("*.parquet"))) == 2

    code, _, err = cli("eval", "--out", str(out), "--controllers", "cost-aware")
    assert code == 2 and "speckv calibrate" in err  # no cost model yet: refused before any work

    code, text, err = cli("calibrate", "--out", str(out), "--prompts", "2")
    assert code == 0, err
    assert "fit error per run" in text
    code, text, err = cli("train", "--out", str(out))
    assert code == 0, err
    arts = sorted(p.name for p in (out / "controllers").glob("*.json"))
    assert [a.split("--")[0] for a in arts] == ["cost-aware", "heterospec", "speckv"]

    spine = "tree:depth=3,nodes=6,width=2,spine"  # replayable; heterospec (a beam) runs live only
    controllers = f"fixed:2,p-min:6,speckv,cost-aware,oracle,heterospec,{spine}"
    code, text, err = cli("eval", "--out", str(out), "--controllers", controllers, "--baselines", "autoregressive,hf-assisted:2")
    assert code == 0, err
    runs = pd.read_parquet(out / "runs.parquet")
    live, rep = runs[runs["mode"] == "live"], runs[runs["mode"] == "replay"]
    assert set(live.controller) == {"autoregressive", "hf-assisted:2", "fixed:2", "p-min:6", "speckv", "cost-aware",
                                    "heterospec", spine}
    assert set(rep.controller) == {"autoregressive", "fixed:2", "p-min:6", "speckv", "cost-aware", "oracle", spine}
    assert len(runs.prompt_id.unique()) == 2 and (runs.new_tokens > 0).all()
    train_ids = set(json.loads((out / "controllers" / arts[0]).read_text())["trained_on"]["prompts"])
    assert train_ids and not train_ids & set(runs.prompt_id)  # held out
    assert "cost model vs live" in text and "refit_over_live" in text  # in-session cost-model check
    assert "Cost model vs live" in (out / "eval.html").read_text()

    # a finished evaluation re-reports on a machine without its cost model and artifacts in the cache
    shutil.rmtree(tmp_path / "cache")
    code, text, err = cli("eval", "--out", str(out), "--controllers", controllers,
                          "--baselines", "autoregressive,hf-assisted:2")
    assert code == 0, err
    assert "cost model vs live" in text and len(pd.read_parquet(out / "runs.parquet")) == len(runs)

    # an artifact trained for one setup is refused for another
    other = tmp_path / "other"
    code, _, err = cli("generate", "hi", "--draft", SMOL, "--target", SMOL, "--compression", "fp32", "--backend", "torch",
                       "--controller", f"cost-aware:{out / 'controllers' / arts[0]}", "--max-new-tokens", "2")
    assert code == 2 and "trained for another setup" in err and "compression bf16 != fp32" in err
    assert not other.exists()


def test_trace_adds_compression_levels_to_a_directory(cli, tmp_path):
    common = ["trace", "--out", str(tmp_path), "--tasks", "chat", "--train-per-task", "1", "--test-per-task", "1",
              "--max-new-tokens", "3", "--depth", "2", "--draft", SMOL, "--target", SMOL]
    assert cli(*common, "--compression", "bf16")[0] == 0
    assert cli(*common, "--compression", "fp32")[0] == 0
    assert json.loads((tmp_path / "eval.json").read_text())["compressions"] == ["bf16", "fp32"]
    code, _, err = cli(*common[:-4], "--max-new-tokens", "5", "--draft", SMOL, "--target", SMOL)
    assert code == 2 and "max_new_tokens: 3 != 5" in err  # another setup: refused


def test_train_writes_only_the_named_levels(cli, monkeypatch, tmp_path):
    """Adding a level to a finished evaluation retrains that level's artifacts only, while SpecKV's
    joint MLP still learns from every traced level."""
    monkeypatch.setattr(artifact, "cache_home", lambda: tmp_path / "cache")
    out = tmp_path / "eval"
    common = ["trace", "--out", str(out), "--tasks", "chat", "--train-per-task", "2", "--test-per-task", "1",
              "--max-new-tokens", "16", "--depth", "4", "--draft", SMOL, "--target", SMOL]
    assert cli(*common, "--compression", "bf16")[0] == 0
    assert cli(*common, "--compression", "fp32")[0] == 0
    code, _, err = cli("calibrate", "--out", str(out), "--compression", "fp32", "--prompts", "1")
    assert code == 0, err

    code, _, err = cli("train", "--out", str(out))
    assert code == 2 and "no cost model" in err and "bf16" in err  # default: every level of the directory
    code, _, err = cli("train", "--out", str(out), "--compression", "fp32")
    assert code == 0, err
    arts = {p.name.split("--")[0]: json.loads(p.read_text()) for p in (out / "controllers").glob("*.json")}
    assert {"cost-aware", "speckv"} <= set(arts) <= {"cost-aware", "speckv", "heterospec"}  # (heterospec: when its data suffices)
    assert all(a["setup"]["compression"] == "fp32" for a in arts.values())
    assert arts["cost-aware"]["trained_on"]["traces"] == 2  # its own level only
    assert arts["speckv"]["trained_on"]["traces"] == 4  # both traced levels
    code, _, err = cli("train", "--out", str(out), "--compression", "int8")
    assert code == 2 and "not int8" in err
