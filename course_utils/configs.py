"""Model configs: the published Llama configs ship inside this package, so no download is needed."""

from __future__ import annotations

import difflib
import json
import os
from importlib import resources
from pathlib import Path

from transformers import AutoConfig, LlamaConfig

# Short course name -> the Hub id the config was published under (None: the course's own model).
MODELS: dict[str, str | None] = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "llama-3.1-405b": "meta-llama/Llama-3.1-405B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "course-llama": None,
}


def known_names() -> list[str]:
    """The config names that ship with the course."""
    return list(MODELS)


def _config_file(name: str) -> Path:
    return Path(str(resources.files("course_utils") / "model_configs" / f"{name}.json"))


def load_config(name: str) -> LlamaConfig:
    """A `LlamaConfig` from a course name ("llama-3.1-8b"), a local folder or a Hub id.

    Course names never touch the network, and ignore case and surrounding spaces. A folder or a Hub id goes
    through `AutoConfig`, so the same call serves the online profiles.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"load_config needs a model name as a string, not {name!r} ({type(name).__name__}); "
                        f"the course's names are {', '.join(MODELS)}.")
    name = str(name).strip()
    key = name.lower()
    if key in MODELS:
        return LlamaConfig(**json.loads(_config_file(key).read_text()))
    for short, hub_id in MODELS.items():  # a Hub id whose config ships here: no download needed
        if hub_id is not None and hub_id.lower() == key:
            return load_config(short)
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"The folder {name} has no config.json; a model folder needs one "
                                    "(save_pretrained writes it).")
        return _as_llama(AutoConfig.from_pretrained(folder), name)
    if _looks_like_a_path(name):
        where = "" if folder.is_absolute() else f" (looked for {folder.resolve()})"
        raise FileNotFoundError(f"The folder {name} does not exist{where}; check the path, "
                                "or give a course name or a Hub id.")
    if "/" in name:
        try:
            config = AutoConfig.from_pretrained(name)
        except Exception as err:  # no network, gated repo, typo: say so in one sentence
            raise ValueError(
                f"Could not fetch the config of {name!r} from the Hugging Face Hub ({type(err).__name__}). "
                f"Check the id, your network and your token, or use a shipped name: {', '.join(MODELS)}."
            ) from None
        return _as_llama(config, name)
    close = difflib.get_close_matches(key, known_names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown model {name!r}.{hint} Known names: {', '.join(MODELS)}; "
                     "or give a Hub id or a local folder.")


def _looks_like_a_path(name: str) -> bool:
    """A folder rather than a Hub id ("owner/model"): starts with ".", "/" or "~", has a backslash or more than
    one "/", or its first part exists here."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    return "/" in name and Path(name.split("/")[0]).exists()


def _as_llama(config, name: str) -> LlamaConfig:
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"{name!r} is a {type(config).__name__}, not a Llama-family config; this course needs a LlamaConfig.")
    return config
