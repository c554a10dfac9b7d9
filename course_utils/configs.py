"""Model configs: the published Llama configs ship inside this package, so no download is needed."""

from __future__ import annotations

import json
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

    Course names never touch the network. A folder or a Hub id goes through `AutoConfig`,
    so the same call serves the online profiles.
    """
    key = name.lower()
    if key in MODELS:
        return LlamaConfig(**json.loads(_config_file(key).read_text()))
    for short, hub_id in MODELS.items():  # a Hub id whose config ships here: no download needed
        if hub_id is not None and hub_id.lower() == key:
            return load_config(short)
    if Path(name).is_dir():
        return _as_llama(AutoConfig.from_pretrained(name), name)
    if "/" in name:
        try:
            config = AutoConfig.from_pretrained(name)
        except Exception as err:  # no network, gated repo, typo: say so in one sentence
            raise ValueError(
                f"Could not fetch the config of {name!r} from the Hugging Face Hub ({type(err).__name__}). "
                f"Check the id, your network and your token, or use a shipped name: {', '.join(MODELS)}."
            ) from None
        return _as_llama(config, name)
    raise ValueError(f"Unknown model {name!r}. Known names: {', '.join(MODELS)}; or give a Hub id or a local folder.")


def _as_llama(config, name: str) -> LlamaConfig:
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"{name!r} is a {type(config).__name__}, not a Llama-family config; this course needs a LlamaConfig.")
    return config
