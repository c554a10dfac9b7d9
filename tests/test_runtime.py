import pytest
import torch

from course_utils import quantization, runtime
from course_utils.runtime import GPU, Environment, choose_profile, compute_dtype_for

T4 = GPU("Tesla T4", 15.8, (7, 5))
A100 = GPU("NVIDIA A100-SXM4-40GB", 42.4, (8, 0))
SMALL = GPU("Quadro P1000", 4.2, (6, 1))


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv(runtime.PROFILE_ENV, raising=False)
    monkeypatch.setattr(runtime, "has_access", lambda model_id: (True, ""))


def test_no_hub_means_offline():
    p = choose_profile("auto", Environment(colab=False, gpu=T4, hub=False, token=True))
    assert p.name == "offline" and "Hub" in p.reason and p.device == "cpu"


def test_t4_with_token_gets_the_8b_in_4bit_with_fp16_compute():
    p = choose_profile("auto", Environment(colab=True, gpu=T4, hub=True, token=True))
    assert (p.name, p.model_id, p.load_in_4bit, p.compute_dtype) == ("gpu", runtime.GPU_MODEL_ID, True, torch.float16)


def test_ampere_gets_bf16_compute():
    p = choose_profile("auto", Environment(colab=True, gpu=A100, hub=True, token=True))
    assert p.compute_dtype == torch.bfloat16


def test_bf16_wish_on_a_t4_falls_back_to_fp16_with_a_note():
    dtype, note = compute_dtype_for(T4, torch.bfloat16)
    assert dtype == torch.float16 and "7.5" in note and "fp16" in note


@pytest.mark.parametrize("env,why", [
    (Environment(colab=True, gpu=None, hub=True, token=True), "no CUDA GPU"),
    (Environment(colab=False, gpu=SMALL, hub=True, token=True), "needs about"),
    (Environment(colab=False, gpu=T4, hub=True, token=False), "no Hugging Face token"),
])
def test_auto_without_what_the_8b_needs_uses_the_small_hub_model(env, why):
    p = choose_profile("auto", env)
    assert p.name == "cpu" and p.model_id == runtime.CPU_MODEL_ID and why in p.reason


def test_gated_model_without_access_falls_back_with_a_sentence(monkeypatch):
    monkeypatch.setattr(runtime, "has_access", lambda m: (False, "your token has no access to the gated model yet"))
    p = choose_profile("auto", Environment(colab=True, gpu=T4, hub=True, token=True))
    assert p.name == "cpu" and "gated" in p.reason


def test_asking_for_gpu_without_one_falls_back_and_says_why(capsys, monkeypatch):
    monkeypatch.setattr(runtime.real_model, "problem", lambda: "run `pip install x`")  # no local copy either
    p = choose_profile("gpu", Environment(colab=True, gpu=None, hub=False, token=False))
    assert p.name == "offline"
    out = capsys.readouterr().out
    assert "no CUDA GPU" in out and "Runtime > Change runtime type" in out and "pip install x" in out


def test_the_cpu_profile_without_the_hub_uses_the_local_copy_of_the_same_model(monkeypatch):
    monkeypatch.setattr(runtime.real_model, "problem", lambda: None)
    monkeypatch.setenv("COURSE_CACHE", "/somewhere/cache")
    for asked in ("cpu", "gpu"):  # gpu without a GPU falls back to cpu, which needs no Hub now
        p = choose_profile(asked, Environment(colab=False, gpu=None, hub=False, token=False))
        assert p.name == "cpu" and p.model_id == "/somewhere/cache/smollm2-135m-instruct"
        assert "local copy" in p.reason and "Q4_1" in p.reason
    online = choose_profile("cpu", Environment(colab=False, gpu=None, hub=True, token=False))
    assert online.model_id == runtime.CPU_MODEL_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_profiles_print_no_machine_paths(monkeypatch):
    monkeypatch.setattr(runtime.real_model, "problem", lambda: None)
    offline = str(choose_profile("offline"))
    assert "assets/course-llama" in offline and str(runtime.repo_root()) not in offline
    monkeypatch.setenv("COURSE_CACHE", str(runtime.Path.home() / ".cache" / "x"))
    local = str(choose_profile("cpu", Environment(colab=False, gpu=None, hub=False, token=False)))
    assert "~/.cache/x/smollm2-135m-instruct" in local and str(runtime.Path.home()) not in local


def test_environment_variable_overrides_auto_but_not_the_notebook_variable(monkeypatch):
    monkeypatch.setenv(runtime.PROFILE_ENV, "offline")
    env = Environment(colab=False, gpu=T4, hub=True, token=True)
    assert choose_profile("auto", env).name == "offline"
    assert "COURSE_PROFILE=offline" in choose_profile("auto", env).reason
    assert choose_profile("gpu", env).name == "gpu"


def test_unknown_profile_name_is_explained(capsys):
    p = choose_profile("turbo", Environment(colab=False, gpu=None, hub=False, token=False))
    assert p.name == "offline" and "offline, cpu, gpu" in capsys.readouterr().out


def test_hub_offline_variable_short_circuits_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert runtime.hub_reachable() is False
    env = runtime.detect()
    assert env.hub is False and env.token is False


def test_offline_model_lives_in_assets():
    p = choose_profile("offline")
    assert p.model_id.endswith(runtime.OFFLINE_MODEL) and runtime.assets_dir().name == "assets"


def test_progress_is_plain_text_when_headless(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_TEXT_PROGRESS", "1")
    assert sum(runtime.progress(range(5), desc="count")) == 10
    assert "count" in capsys.readouterr().out


def test_bnb_config_asks_for_nf4_with_double_quantization():
    cfg = quantization.bnb_4bit_config(torch.float16)
    assert (cfg.load_in_4bit, cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert cfg.bnb_4bit_compute_dtype == torch.float16


def test_bitsandbytes_problem_is_a_sentence_or_none(monkeypatch):
    assert quantization.bitsandbytes_problem() is None  # 0.50.2 is installed by requirements.txt
    import builtins
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    assert "pip install bitsandbytes==0.50.2" in quantization.bitsandbytes_problem()


def test_missing_offline_model_says_how_to_rebuild_it(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_ASSETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pretrain_course_model.py"):
        runtime.load_model(choose_profile("offline"))


def test_failed_download_falls_back_to_the_local_copy_of_the_same_model(monkeypatch, capsys):
    """An unreachable Hub: one sentence, then SmolLM2 from its local copy (the same model, offline)."""
    if runtime.real_model.problem() is not None:
        pytest.skip(runtime.real_model.problem())
    monkeypatch.setattr(runtime, "_network_failed", False)
    env = Environment(colab=False, gpu=None, hub=True, token=False)
    profile = choose_profile("cpu", env)
    model, tokenizer = runtime.load_model(profile)
    out = capsys.readouterr().out
    assert "Could not load HuggingFaceTB/SmolLM2-135M-Instruct" in out and "Using the cpu profile instead" in out
    assert profile.model_id == str(runtime.real_model.cache_folder()) and "local copy" in profile.reason
    assert model.config.model_type == "llama" and len(tokenizer) == 49152


def test_preparing_the_real_model_without_its_package_says_what_to_run(capsys, monkeypatch, tmp_path):
    from course_utils import real_model
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(real_model, "find_gguf", lambda: None)
    assert real_model.prepare() is False
    out = capsys.readouterr().out
    assert real_model.INSTALL_COMMAND in out and "small model" in out and not list(tmp_path.iterdir())


def test_ci_has_the_real_model():
    """In CI the real-model tests must run, not skip: setup_env.sh installs and converts SmolLM2."""
    from course_utils import real_model
    if not runtime.os.environ.get("CI"):
        pytest.skip("outside CI, the real-model tests may skip with the command that installs it")
    assert real_model.problem() is None


def test_a_failed_download_updates_the_profile_and_never_waits_on_the_network_again(capsys, monkeypatch):
    import transformers
    monkeypatch.setattr(runtime, "_network_failed", False)
    monkeypatch.setattr(runtime.real_model, "problem", lambda: "run `pip install x`")
    real_from_pretrained = transformers.AutoTokenizer.from_pretrained

    def no_network(model_id, *args, **kwargs):
        if not runtime.Path(model_id).is_dir():
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real_from_pretrained(model_id, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_network)
    profile = runtime.Profile("cpu", runtime.CPU_MODEL_ID, "cpu", False, torch.float32, "the Hub was reachable")
    model, _ = runtime.load_model(profile)
    assert profile.name == "offline" and profile.model_id.endswith("course-llama")  # later cells see the truth
    assert model.config.vocab_size < 1000
    out = capsys.readouterr().out
    assert "Could not load HuggingFaceTB/SmolLM2-135M-Instruct" in out and "offline profile" in out

    def no_call(*args, **kwargs):
        raise AssertionError("the network was tried again")

    monkeypatch.setattr(runtime.urllib.request, "urlopen", no_call)
    assert runtime.hub_reachable() is False
    assert choose_profile("auto").name == "offline"


def test_the_gpu_profile_without_4bit_switches_to_the_cpu_profile(capsys, monkeypatch):
    monkeypatch.setattr(runtime, "four_bit_problem", lambda device: "bitsandbytes is not installed")
    monkeypatch.setattr(runtime, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(runtime.real_model, "problem", lambda: "run `pip install x`")
    profile = runtime.Profile("gpu", runtime.GPU_MODEL_ID, "cuda", True, torch.float16, "a T4 and a token")
    model, _ = runtime.load_model(profile, four_bit=True)
    out = capsys.readouterr().out
    assert "Using the cpu profile instead" in out and "bitsandbytes is not installed" in out
    assert profile.name != "gpu" and not getattr(model, "is_loaded_in_4bit", False)


def test_a_local_folder_stands_in_for_the_8b(monkeypatch):
    monkeypatch.setenv(runtime.GPU_MODEL_ENV, str(runtime.assets_dir() / runtime.OFFLINE_MODEL))
    p = choose_profile("auto", Environment(colab=False, gpu=T4, hub=False, token=False))
    assert p.name == "gpu" and p.model_id.endswith("course-llama") and "local model" in p.reason
    monkeypatch.delenv(runtime.GPU_MODEL_ENV)
    assert choose_profile("auto", Environment(colab=False, gpu=T4, hub=False, token=False)).name == "offline"


def test_free_bytes_reads_the_gpu_or_the_host(monkeypatch):
    """Notebook 06 merges into a full-precision base when it fits the free memory of the profile's device (a T4
    running the cpu profile has room for SmolLM2 in fp16, not for the 8B), not when the device is the CPU."""
    import psutil
    from course_utils.configs import load_config
    from course_utils.memory import weight_bytes
    monkeypatch.setattr(runtime.torch.cuda, "mem_get_info", lambda: (13_000_000_000, 15_800_000_000))
    assert runtime.free_bytes("cuda") == 13_000_000_000
    assert runtime.free_bytes("cpu") == pytest.approx(psutil.virtual_memory().available, rel=0.2)
    room = runtime.free_bytes("cuda")
    assert weight_bytes(load_config("smollm2-135m"), "fp16") < 0.8 * room
    assert weight_bytes(load_config("llama-3.1-8b"), "fp16") > 0.8 * room


def test_run_folders_print_without_the_machines_temporary_path(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CHECKPOINT_ROOT", str(tmp_path))
    shown = runtime.display_path(str(tmp_path / "06-offline" / "checkpoints"))
    assert shown == "$COURSE_CHECKPOINT_ROOT/06-offline/checkpoints" and str(tmp_path) not in shown
    assert runtime.display_path(str(runtime.repo_root() / "runs" / "x")) == "runs/x"


@pytest.mark.parametrize("name", [" offline", "OFFLINE", "Offline ", " cpu ", "GPU"])
def test_profile_names_ignore_case_and_spaces(name, capsys, monkeypatch):
    env = Environment(colab=False, gpu=T4, hub=True, token=True)
    assert choose_profile(name, env).name == name.strip().lower()
    monkeypatch.setenv(runtime.PROFILE_ENV, name)
    assert choose_profile("auto", env).name == name.strip().lower()
    assert "Unknown" not in capsys.readouterr().out


def test_an_unknown_profile_suggests_the_closest(capsys, monkeypatch):
    choose_profile("ofline", Environment(colab=False, gpu=None, hub=False, token=False))
    out = capsys.readouterr().out
    assert "Unknown profile 'ofline'" in out and "offline, cpu, gpu" in out and "Did you mean 'offline'?" in out
    monkeypatch.setenv(runtime.PROFILE_ENV, "gpus")
    choose_profile("auto", Environment(colab=False, gpu=None, hub=False, token=False))
    out = capsys.readouterr().out
    assert "(from $COURSE_PROFILE)" in out and "Did you mean 'gpu'?" in out


def test_course_assets_pointing_at_a_missing_folder_says_so(monkeypatch, tmp_path):
    missing = tmp_path / "not-here"
    monkeypatch.setenv("COURSE_ASSETS", str(missing))
    with pytest.raises(FileNotFoundError, match=f"COURSE_ASSETS points at {missing}, a folder that does not exist: "
                                                "unset it") as err:
        runtime.load_model(choose_profile("offline"))
    assert "pretrain_course_model" not in str(err.value)


def test_a_model_folder_without_tokenizer_json_says_so(tmp_path):
    (tmp_path / "config.json").write_text((runtime.assets_dir() / runtime.OFFLINE_MODEL / "config.json").read_text())
    profile = choose_profile("offline")
    profile.model_id = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json. Run `python scripts/pretrain_course_model.py`"):
        runtime.load_model(profile)


def _never_asks_the_hub_about_the_8b(model_id):
    raise AssertionError(f"asked the Hub about {model_id}")


@pytest.mark.parametrize("asked", ["auto", "gpu"], ids=["auto", "asked-for-gpu"])  # "gpu" alone marks a GPU test
def test_a_small_model_notebook_on_a_t4_with_a_token_gets_smollm2_on_the_gpu(asked, monkeypatch):
    """Notebooks 02, 04 and 05 show the 8B on the meta device: never its 16 GB download, even with a token."""
    monkeypatch.setattr(runtime, "has_access", _never_asks_the_hub_about_the_8b)
    env = Environment(colab=True, gpu=T4, hub=True, token=True)
    p = choose_profile(asked, env, small_model=True)
    assert (p.name, p.model_id, p.device, p.load_in_4bit, p.compute_dtype) == (
        "cpu", runtime.CPU_MODEL_ID, "cuda", False, torch.float16)
    assert "meta device" in p.reason and ("gpu profile was asked for" in p.reason) == (asked == "gpu")
    monkeypatch.setattr(runtime, "has_access", lambda model_id: (True, ""))
    assert choose_profile(asked, env).model_id == runtime.GPU_MODEL_ID  # notebook 06 still trains the 8B


def test_a_small_model_notebook_without_the_hub_or_with_a_local_8b(monkeypatch):
    monkeypatch.setattr(runtime.real_model, "problem", lambda: None)
    monkeypatch.setenv("COURSE_CACHE", "/somewhere/cache")
    no_hub = Environment(colab=False, gpu=T4, hub=False, token=False)
    assert choose_profile("auto", no_hub, small_model=True).name == "offline"  # as without a GPU
    asked = choose_profile("gpu", no_hub, small_model=True)
    assert asked.model_id == "/somewhere/cache/smollm2-135m-instruct" and asked.device == "cuda"
    monkeypatch.setenv(runtime.GPU_MODEL_ENV, str(runtime.assets_dir() / runtime.OFFLINE_MODEL))
    for requested in ("auto", "gpu"):  # a local stand-in for the 8B is the 8B's business, not these notebooks'
        assert choose_profile(requested, no_hub, small_model=True).name != "gpu"
    assert choose_profile("offline", no_hub, small_model=True).name == "offline"
    assert choose_profile("cpu", Environment(colab=False, gpu=None, hub=True, token=False),
                          small_model=True).model_id == runtime.CPU_MODEL_ID


def test_the_small_model_in_4bit_on_a_gpu_runtime_is_quantized_on_the_gpu(monkeypatch):
    """What load_model asks transformers for: SmolLM2 with NF4 settings, placed on the GPU (no GPU needed here)."""
    import transformers
    calls = {}

    class Loaded(torch.nn.Module):
        def forward(self):
            return None

    monkeypatch.setattr(runtime, "four_bit_problem", lambda device: None)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda model_id, **kw: "tokenizer")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda model_id, **kw: calls.update(model_id=model_id, **kw) or Loaded())
    profile = choose_profile("auto", Environment(colab=True, gpu=T4, hub=True, token=True), small_model=True)
    runtime.load_model(profile, four_bit=True)
    assert calls["model_id"] == runtime.CPU_MODEL_ID and calls["device_map"] == "cuda"
    assert calls["quantization_config"].bnb_4bit_quant_type == "nf4" and calls["dtype"] == torch.float16
