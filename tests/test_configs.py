import json
from pathlib import Path

import pytest
from transformers import LlamaConfig

from course_utils.architecture import empty_model, num_params
from course_utils.configs import MODELS, known_names, load_config

# Published totals (tied embeddings counted once), checked on the meta device with transformers 5.24.
EXPECTED = {
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.1-405b": 405_853_388_800,
    "llama-3.2-1b": 1_235_814_400,
}
REFERENCE = Path(__file__).resolve().parent / "reference" / "configs"  # the published config.json files (README.md there)


@pytest.mark.parametrize("name", known_names())
def test_every_known_name_loads_as_llama(name):
    config = load_config(name)
    assert isinstance(config, LlamaConfig)
    assert config.num_attention_heads % config.num_key_value_heads == 0


@pytest.mark.parametrize("name,count", EXPECTED.items())
def test_meta_models_have_the_published_parameter_counts(name, count):
    assert num_params(empty_model(load_config(name))) == count


def test_names_are_case_insensitive_and_hub_ids_of_shipped_configs_need_no_network():
    assert load_config("Llama-3.1-8B").hidden_size == 4096
    assert load_config("meta-llama/Llama-3.1-8B").num_hidden_layers == 32


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        load_config("llama-9b")
    for name in MODELS:
        assert name in str(err.value)


def test_local_folder_is_accepted(tmp_path):
    load_config("smollm2-135m").save_pretrained(tmp_path)
    assert load_config(str(tmp_path)).hidden_size == 576


def test_unreachable_hub_id_gives_a_sentence_not_a_traceback():
    with pytest.raises(ValueError, match="Could not fetch the config"):
        load_config("someone/not-a-real-model")


def test_shipped_configs_equal_the_published_ones():
    for short, hub_id in MODELS.items():
        if hub_id is None:
            continue
        published = json.loads((REFERENCE / f"{hub_id.split('/')[1]}.json").read_text())
        shipped = json.loads((Path(load_config.__code__.co_filename).parent / "model_configs" / f"{short}.json").read_text())
        assert shipped == published, short


def test_names_ignore_surrounding_spaces_and_an_unknown_name_gets_the_closest():
    assert load_config(" Llama-3.1-8B ").hidden_size == 4096
    with pytest.raises(ValueError, match="Unknown model 'llama-3.1-9b'. Did you mean 'llama-3.1-8b'?"):
        load_config("llama-3.1-9b")


def test_none_is_a_sentence_that_lists_the_names():
    with pytest.raises(TypeError, match="needs a model name as a string, not None") as err:
        load_config(None)
    assert all(name in str(err.value) for name in MODELS)


@pytest.mark.parametrize("path", ["./my-model", "~/no-such-model-here", "models/llama", "/no/such/folder"])
def test_a_missing_folder_says_so_instead_of_asking_the_hub(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # "models/llama": the first part exists, so it is a path, not a Hub id
    with pytest.raises(FileNotFoundError, match=f"The folder {path} does not exist") as err:
        load_config(path)
    assert "Hub" not in str(err.value).split(";")[0]


def test_a_folder_without_config_json_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json; a model folder needs one"):
        load_config(str(tmp_path))
    load_config("smollm2-135m").save_pretrained(tmp_path)
    assert load_config(tmp_path).hidden_size == 576  # a Path works too


def test_the_course_models_comment_agrees_with_its_config():
    """The shipped model's config.json says in words what its numbers say (8 query heads, 4 KV heads)."""
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    shipped = json.loads((root / "assets/course-llama/config.json").read_text())
    source = json.loads((root / "course_utils/model_configs/course-llama.json").read_text())
    assert shipped["_comment"] == source["_comment"]
    words = {1: "One", 2: "Two", 4: "Four", 8: "Eight", 16: "Sixteen"}
    assert f"{words[shipped['num_attention_heads']]} query heads share " \
           f"{words[shipped['num_key_value_heads']].lower()} key/value heads" in shipped["_comment"]
