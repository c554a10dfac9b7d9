"""Many adapters on one base (course_utils.adapters): the second task's data, the mixed batch
against one adapter at a time, and the bytes of one base with adapters against merged copies."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from course_utils import adapters, data, export, training
from course_utils.runtime import OFFLINE_MODEL, assets_dir

MODEL = assets_dir() / OFFLINE_MODEL
# Two adapters that differ in rank and targets; alpha = 2 r as in the course.
SETTINGS = {"first": dict(r=8, alpha=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=1),
            "second": dict(r=4, alpha=8, targets=("q_proj", "v_proj"), seed=2)}


def load_base():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return data.prepare_tokenizer(AutoTokenizer.from_pretrained(MODEL))


def randomize_b(model, name: str, seed: int) -> None:
    """Non-zero lora_B, so the adapter changes the output without any training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if f"lora_B.{name}." in param_name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


@pytest.fixture(scope="module")
def model():
    model = load_base()
    for name, settings in SETTINGS.items():
        model = adapters.add_named_adapter(model, name, **settings)
        randomize_b(model, name, settings["seed"])
    return model.eval()


@pytest.fixture(scope="module")
def prompts():
    """Prompts of both tasks, of different lengths, so the left padding matters."""
    calendar = [data.make_prompt(ex["request"]) for ex in data.load_split("test", limit=3)]
    dates = [ex["prompt"] for ex in adapters.date_examples("test", limit=6)[3:]]
    return calendar + dates


# ------------------------------------------------------------------------------------------------
# The second task
# ------------------------------------------------------------------------------------------------

def test_the_second_task_reads_a_request_and_writes_when_and_where():
    request = "Let's go for lunch with Maria in Paris on Tuesday at 3:30 pm."
    assert adapters.date_prompt(request) == (
        "Turn the request into a date.\nRequest: Let's go for lunch with Maria in Paris on "
        "Tuesday at 3:30 pm.\nRecord:")
    record = {"for": "LUNCH", "with": "maria", "on": "Tue", "at": "15:30", "in": "PAR"}
    assert adapters.date_answer(record) == " on Tue at 15:30 in PAR"
    # the calendar adapter's answer to the same request is another line
    assert data.make_answer(record) == " for LUNCH | with maria | on Tue | at 15:30 | in PAR"
    assert adapters.date_answer(dict(record, at="09:00")) == " on Tue at 09:00 in PAR"
    with pytest.raises(ValueError, match="not a record of the course's task"):
        adapters.date_answer({"for": "LUNCH", "with": "maria", "on": "Tue", "in": "PAR"})
    with pytest.raises(ValueError, match="never uses"):
        adapters.date_answer(dict(record, at="07:15"))
    with pytest.raises(ValueError, match="never uses"):
        adapters.date_answer(dict(record, on="Tuesday"))


def test_every_answer_is_the_records_day_time_and_city():
    for ex in adapters.date_examples("test"):
        r = ex["record"]
        assert ex["answer"] == f" on {r['on']} at {r['at']} in {r['in']}"
        assert ex["prompt"] == data.make_prompt(ex["request"]).replace(
            data.INSTRUCTION, adapters.DATE_INSTRUCTION)


def test_the_second_tasks_examples_come_from_the_splits_without_leaking():
    train, test = adapters.date_examples("train"), adapters.date_examples("test")
    keys = {split: [ex["request"] for ex in rows] for split, rows in (("train", train),
                                                                     ("test", test))}
    assert len(set(keys["train"])) == len(train) > 3000 and len(set(keys["test"])) == len(test)
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["train"]) & {ex["request"] for ex in data.load_split("validation")}
    assert len(adapters.date_examples("test", limit=5)) == 5


def test_the_loss_is_on_the_answer_only_and_every_token_is_in_the_vocabulary(tokenizer):
    examples = [ex for split in ("train", "validation", "test")
                for ex in adapters.date_examples(split)]
    encoded = adapters.encode_dates(tokenizer, examples)
    assert all(tokenizer.unk_token_id not in enc["input_ids"] for enc in encoded)
    for ex, enc in list(zip(examples, encoded))[:50]:
        prompt_ids = tokenizer(ex["prompt"])["input_ids"]
        answer_ids = tokenizer(ex["answer"], add_special_tokens=False)["input_ids"]
        assert enc["input_ids"] == prompt_ids + answer_ids + [tokenizer.eos_token_id]
        assert enc["labels"] == [data.IGNORE_INDEX] * len(prompt_ids) + answer_ids + [
            tokenizer.eos_token_id]
        graded = [i for i, label in zip(enc["input_ids"], enc["labels"])
                  if label != data.IGNORE_INDEX]
        assert tokenizer.decode(graded, skip_special_tokens=True) == ex["answer"]
    # encode_example is encode_pair on the calendar task's prompt and answer
    ex = data.load_split("test", limit=1)[0]
    assert data.encode_example(tokenizer, ex, 30) == data.encode_pair(
        tokenizer, data.make_prompt(ex["request"]), data.make_answer(ex["record"]), 30)


def test_score_dates_reads_the_first_line():
    examples = adapters.date_examples("test", limit=2)
    right = examples[0]["answer"] + "\nmore"
    assert adapters.score_dates([right, "nonsense"], examples) == {"exact_match": 0.5, "n": 2}
    with pytest.raises(ValueError, match="give one each"):
        adapters.score_dates([right], examples)


def test_a_second_adapter_trains_and_leaves_the_first_alone(tokenizer):
    model = adapters.add_named_adapter(load_base(), "calendar", r=8, alpha=16)
    randomize_b(model, "calendar", 0)
    first = {n: p.detach().clone() for n, p in model.named_parameters() if ".calendar." in n}
    model = adapters.add_named_adapter(model, "to_date", r=8, alpha=16)
    trainable = training.trainable_parameters(model)
    assert trainable and all(".to_date." in n for n in trainable)
    examples = adapters.date_examples("train", limit=64)
    features = adapters.encode_dates(tokenizer, examples, 64)
    config = replace(training.PRESETS["offline"], steps=4, batch_size=16, warmup_steps=1)
    batches = data.Batches(features, config.batch_size, tokenizer.pad_token_id, seed=0)
    result = training.train(model, batches, config, show_progress=False)
    assert result.steps_run == 4 and result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(torch.equal(p, first[n]) for n, p in model.named_parameters() if n in first)


# ------------------------------------------------------------------------------------------------
# One batch, many adapters
# ------------------------------------------------------------------------------------------------

def test_the_two_adapters_and_the_base_write_different_things(model, tokenizer, prompts):
    n = len(prompts)
    outputs = {name: adapters.generate_each(model, tokenizer, prompts, [name] * n, 12, ids=True)
               for name in ("first", "second", adapters.BASE)}
    for i in range(n):  # every row differs, so the equality below is not vacuous
        assert len({tuple(out[i]) for out in outputs.values()}) == 3


def test_the_mixed_batch_equals_each_adapter_alone(model, tokenizer, prompts):
    names = ["first", "second", adapters.BASE, "second", "first", "second"]
    rows = adapters.mixed_vs_each(model, tokenizer, prompts, names, max_new_tokens=12)
    assert [row["adapter"] for row in rows] == names
    assert all(row["same"] for row in rows)
    texts = adapters.generate_mixed(model, tokenizer, prompts, names, 12)
    assert texts == [row["mixed"] for row in rows] and all(isinstance(t, str) for t in texts)


def test_rows_routed_to_the_wrong_adapter_are_caught(model, tokenizer, prompts):
    names = ["first", "second", "first", "second", "first", "second"]
    swapped = ["second" if name == "first" else "first" for name in names]
    each = adapters.generate_each(model, tokenizer, prompts, names, 12, ids=True)
    mixed = adapters.generate_mixed(model, tokenizer, prompts, swapped, 12, ids=True)
    assert all(m != e for m, e in zip(mixed, each))
    # the active adapter plays no part in a mixed batch
    model.set_adapter("second")
    try:
        assert adapters.generate_mixed(model, tokenizer, prompts, names, 12, ids=True) == each
    finally:
        model.set_adapter("first")


def test_generate_each_puts_the_model_back(model, tokenizer, prompts):
    model.set_adapter("second")
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    try:
        adapters.generate_each(model, tokenizer, prompts[:2], ["first", adapters.BASE], 4)
        adapters.generate_mixed(model, tokenizer, prompts[:2], ["first", "second"], 4)
        assert model.active_adapter == "second" and model.training
        assert [p.requires_grad for p in model.parameters()] == flags
    finally:
        model.eval()
        model.set_adapter("first")


def test_what_peft_refuses_in_a_mixed_batch(model, tokenizer, prompts):
    two = prompts[:2]
    assert adapters.mixed_batch_problem(model, ["first", "second"], 2) is None
    assert "one name per prompt" in adapters.mixed_batch_problem(model, ["first"], 2)
    assert "No adapter called 'c'" in adapters.mixed_batch_problem(model, ["first", "c"], 2)
    with pytest.raises(ValueError, match="one adapter name per prompt"):
        adapters.generate_mixed(model, tokenizer, two, "first", 4)
    with pytest.raises(ValueError, match="No adapter called 'c'"):
        adapters.generate_each(model, tokenizer, two, ["first", "c"], 4)
    batch = data.pad_batch([{"input_ids": tokenizer(p)["input_ids"]} for p in two],
                           tokenizer.pad_token_id, side="left")
    model.train()  # PEFT itself refuses adapter_names in training mode
    try:
        with pytest.raises(ValueError, match="training mode"):
            model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           max_new_tokens=2, adapter_names=["first", "second"])
    finally:
        model.eval()
    model.merge_adapter(["first"])  # a merged adapter: the base is no longer shared
    try:
        assert "merged" in adapters.mixed_batch_problem(model, ["first", "second"], 2)
        with pytest.raises(ValueError, match="unmerge_adapter"):
            adapters.generate_mixed(model, tokenizer, two, ["first", "second"], 4)
    finally:
        model.unmerge_adapter()
    with pytest.raises(TypeError, match="not a PEFT model"):
        adapters.generate_mixed(load_base(), tokenizer, two, ["first", "second"], 4)


def test_adapters_saved_and_loaded_onto_a_fresh_base_give_the_same_rows(model, tokenizer, prompts,
                                                                          tmp_path):
    folders = {name: adapters.save_adapter(model, name, tmp_path) for name in ("first", "second")}
    assert all((folder / "adapter_config.json").is_file() for folder in folders.values())
    loaded = adapters.load_adapters(load_base(), folders)
    assert adapters.adapter_list(loaded) == ["first", "second"]
    assert loaded.active_adapter == "first"
    assert not training.trainable_parameters(loaded)
    names = ["second", "first", adapters.BASE, "first", "second", "second"]
    assert (adapters.generate_mixed(loaded, tokenizer, prompts, names, 12, ids=True)
            == adapters.generate_mixed(model, tokenizer, prompts, names, 12, ids=True))
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        adapters.load_adapters(load_base(), {"x": tmp_path / "nowhere"})
    with pytest.raises(ValueError, match="is loaded already"):
        adapters.add_named_adapter(model, "first")


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------

def hand_counts(config) -> tuple[int, dict[str, int]]:
    """Parameters of the base and of each adapter, from the config alone."""
    h, heads, kv, hd = (config.hidden_size, config.num_attention_heads,
                        config.num_key_value_heads, config.head_dim)
    shapes = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd),
              "o_proj": (heads * hd, h), "gate_proj": (h, config.intermediate_size),
              "up_proj": (h, config.intermediate_size), "down_proj": (config.intermediate_size, h)}
    per_layer = sum(i * o for i, o in shapes.values()) + 2 * h  # 7 Linear layers, 2 RMSNorms
    base = config.vocab_size * h + config.num_hidden_layers * per_layer + h  # tied embeddings
    lora = {name: config.num_hidden_layers * sum(s["r"] * sum(shapes[t]) for t in s["targets"])
            for name, s in SETTINGS.items()}  # r * (in + out) per target per layer
    return base, lora


def test_parameter_bytes_match_a_hand_count(model):
    base, lora = hand_counts(model.get_base_model().config)
    sizes = adapters.parameter_bytes(model)
    assert sizes == {"base": 4 * base, "adapters": {name: 4 * n for name, n in lora.items()}}
    assert adapters.parameter_bytes(load_base()) == {"base": 4 * base, "adapters": {}}


def test_one_base_with_adapters_against_merged_copies(model, tokenizer, prompts):
    base, lora = hand_counts(model.get_base_model().config)
    sizes = adapters.serving_bytes(model)
    assert sizes["base"] == 4 * base and sizes["adapters"] == {n: 4 * c for n, c in lora.items()}
    assert sizes["shared"] == 4 * (base + sum(lora.values()))
    assert sizes["merged"] == {"first": 4 * base, "second": 4 * base}
    assert sizes["merged_total"] == 8 * base
    assert sizes["rss_merged"] is None or isinstance(sizes["rss_merged"], int)
    model.set_adapter("first")
    merged = export.merged_model(model, adapter="second")  # the named adapter, not the active one
    assert not adapters.parameter_bytes(merged)["adapters"]
    ids = torch.tensor([tokenizer(prompts[0])["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)
        model.set_adapter("second")
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)
    model.set_adapter("first")
    assert adapters.adapter_list(model) == ["first", "second"]  # the original keeps both, unmerged
    with pytest.raises(ValueError, match="No adapter called 'third': this model holds first, second"):
        export.merged_model(model, adapter="third")
    assert adapters.mixed_batch_problem(model, ["first", "second"], 2) is None
