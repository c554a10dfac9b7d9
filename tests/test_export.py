"""course_utils.export: a merged 16-bit folder and GGUF files (F32, F16, Q8_0) read back by
transformers give the model's own logits and greedy text; llama.cpp's q/k row order for RoPE
matters; the caller keeps its adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from course_utils import data, evaluation, export, real_model, runtime

gguf = pytest.importorskip("gguf")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def course():
    """The course model with a random rank-8 adapter on every Linear; lora_B is not zero, so
    merging changes the weights."""
    folder = runtime.assets_dir() / runtime.OFFLINE_MODEL
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    ids = torch.randint(4, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(1))
    return model.eval(), tokenizer, ids


@pytest.fixture(scope="module")
def merged(course):
    return export.merged_model(course[0])


@pytest.fixture(scope="module")
def prompts():
    return [data.make_prompt(ex["request"]) for ex in data.load_split("test", limit=3)]


def test_the_merged_copy_computes_what_the_adapter_does(course, merged):
    model, _, ids = course
    assert not hasattr(merged, "peft_config") and type(merged).__name__ == "LlamaForCausalLM"
    assert export.max_logit_diff(model, merged, ids) < 1e-4  # measured 2.0e-5: sums reordered
    with model.disable_adapter():
        assert export.max_logit_diff(model, merged, ids) > 1.0  # the adapter matters


@pytest.mark.parametrize("qtype", export.QTYPES)
def test_gguf_read_back_gives_the_same_logits(course, merged, tmp_path, qtype):
    _, tokenizer, ids = course
    path = export.write_gguf(merged, tokenizer, tmp_path / f"course-{qtype}.gguf", qtype)
    back = export.read_gguf(path)
    assert back.config.head_dim == 48 != back.config.hidden_size // back.config.num_attention_heads
    assert back.config.num_key_value_heads == 4 and back.config.tie_word_embeddings
    assert export.max_logit_diff(merged, back, ids) <= export.GGUF_TOLERANCE[qtype]
    assert export.read_gguf_tokenizer(path) is None  # the word-level vocabulary stays beside it
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no .part left behind


def test_gguf_tensor_types_follow_llama_cpp(course, merged, tmp_path):
    path = export.write_gguf(merged, course[1], tmp_path / "course.gguf", "q8_0")
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied: the embedding is the output layer
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "Q8_0"
    assert reader.get_field("tokenizer.ggml.model").contents() == "none"
    assert reader.get_field("llama.rope.dimension_count").contents() == 48
    assert reader.get_field("llama.attention.key_length").contents() == 48


def test_q8_0_only_where_rows_fill_whole_blocks_and_no_tokenizer_means_none(merged, tmp_path):
    assert export._encode(gguf, np.ones((4, 64), np.float32), "Q8_0")[1].name == "Q8_0"
    assert export._encode(gguf, np.ones((4, 48), np.float32), "Q8_0")[0].dtype == np.float16
    assert export._encode(gguf, np.ones(48, np.float32), "F16")[0].dtype == np.float32  # norms
    reader = gguf.GGUFReader(export.write_gguf(merged, None, tmp_path / "bare.gguf"))
    assert reader.get_field("tokenizer.ggml.model").contents() == "none"


def test_pre_tokenizer_names_are_llama_cpps():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    sequence = {"type": "Sequence", "pretokenizers": [digits, byte_level]}
    assert export._byte_level_pre({"pre_tokenizer": byte_level}) == "gpt-2"
    assert export._byte_level_pre({"pre_tokenizer": sequence}) == "smollm"  # SmolLM2 on the Hub
    assert export._byte_level_pre({"pre_tokenizer": {"type": "Metaspace"}}) is None
    assert export._byte_level_pre({}) is None


def test_gguf_without_the_rope_permutation_is_wrong(course, merged, tmp_path, monkeypatch):
    _, tokenizer, ids = course
    monkeypatch.setattr(export, "permute_rope", lambda w, n_head: w)
    back = export.read_gguf(export.write_gguf(merged, tokenizer, tmp_path / "plain.gguf", "F32"))
    assert export.max_logit_diff(merged, back, ids) > 1.0  # the reader undoes a swap never done


def test_permute_rope_interleaves_the_two_halves_of_each_head():
    rows = np.arange(8)[:, None]  # two heads of 4 rows: halves (0, 1 | 2, 3) and (4, 5 | 6, 7)
    assert export.permute_rope(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_save_merged_keeps_the_adapter_and_reloads_with_the_same_greedy_text(
        course, merged, tmp_path, prompts):
    model, tokenizer, ids = course
    before = {n: p.clone() for n, p in model.named_parameters() if "lora_" in n}
    folder = export.save_merged(model, tokenizer, tmp_path / "merged", torch.bfloat16)
    after = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in after)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert reloaded.dtype == torch.bfloat16 and not (folder / "adapter_config.json").exists()
    assert export.max_logit_diff(merged, reloaded, ids) <= export.MERGED_TOLERANCE[torch.bfloat16]
    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    ours = evaluation.generate_texts(model, tokenizer, prompts, max_new_tokens=12)
    theirs = evaluation.generate_texts(reloaded.float(), reloaded_tokenizer, prompts, 12)
    assert theirs == ours


def test_gguf_q8_0_gives_the_same_greedy_text(course, merged, tmp_path, prompts):
    tokenizer = course[1]
    back = export.read_gguf(export.write_gguf(merged, tokenizer, tmp_path / "q8.gguf", "Q8_0"))
    ours = evaluation.generate_texts(merged, tokenizer, prompts, max_new_tokens=12)
    assert evaluation.generate_texts(back, tokenizer, prompts, max_new_tokens=12) == ours


def test_clear_errors(course, merged, tmp_path):
    model, tokenizer, _ = course
    with pytest.raises(ValueError, match="qtype must be one of F32, F16, Q8_0"):
        export.write_gguf(merged, tokenizer, tmp_path / "x.gguf", "Q4_K")
    with pytest.raises(ValueError, match="merge the adapter first"):
        export.write_gguf(model, tokenizer, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="dtype must be"):
        export.merged_model(model, torch.int8)
    with pytest.raises(FileNotFoundError, match="run the cell that writes it"):
        export.read_gguf(tmp_path / "missing.gguf")
    assert not list(tmp_path.iterdir())


def test_sizes(course, merged, tmp_path):
    f16 = export.write_gguf(merged, course[1], tmp_path / "f16.gguf", "F16")
    q8 = export.write_gguf(merged, course[1], tmp_path / "q8.gguf", "Q8_0")
    assert export.disk_bytes(tmp_path) == export.disk_bytes(f16) + export.disk_bytes(q8)
    assert 0.5 < export.disk_bytes(q8) / export.disk_bytes(f16) < 0.56  # 34 bytes per 32, not 64
    table = export.size_table({"F16": f16, "Q8_0": q8})
    assert table.splitlines()[0].startswith("F16 ") and "100.0%" in table


@pytest.mark.skipif(real_model.problem() is not None, reason=str(real_model.problem()))
def test_smollm2_gguf_with_its_tokenizer(tmp_path):
    """SmolLM2's real weights and BPE tokenizer through an F16 GGUF. Two of its 30 layers keep the
    test short: transformers' reader spends its time on the vocabulary and the layers' names."""
    folder = real_model.local_copy()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    path = export.write_gguf(model, tokenizer, tmp_path / "smollm2.gguf", "F16")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("tokenizer.ggml.model").contents() == "gpt2"
    assert reader.get_field("tokenizer.ggml.token_type").contents()[:3] == [3, 3, 3]  # control

    text = "The capital of France is Paris.<|im_end|> Llamas eat grass, don't they?"
    back_tokenizer = export.read_gguf_tokenizer(path)
    assert back_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert back_tokenizer.chat_template == tokenizer.chat_template
    assert back_tokenizer.bos_token == tokenizer.bos_token == "<|im_start|>"

    back = export.read_gguf(path)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert export.max_logit_diff(model, back, ids) < 0.1  # measured 0.028 (logits reach 30)
