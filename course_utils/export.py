"""From a trained adapter to files other programs load: a merged 16-bit folder and a GGUF file.

A LoRA adapter is a few megabytes that only PEFT knows how to add to its base. To serve the model
elsewhere (notebook 09):

- `save_merged`: fold `W + (alpha / r) B A` into every adapted layer of a copy of the model (PEFT's
  `merge_and_unload`), cast it to 16 bits and save it with its tokenizer. Serving engines (vLLM,
  TGI) and converters read such a folder; the caller's model keeps its adapter.
- `write_gguf`: the same weights as one GGUF file, the format of llama.cpp, Ollama and LM Studio,
  written with the `gguf` package the way llama.cpp's `convert_hf_to_gguf.py` writes a Llama: F32,
  F16 or Q8_0 (blocks of 32 int8 weights sharing one fp16 scale; norms and other 1-D tensors stay
  F32). The q and k projections' rows are reordered for llama.cpp's RoPE (`permute_rope`);
  transformers' GGUF reader puts them back.
- `read_gguf` reads a GGUF back with transformers, so a notebook can measure what each format costs
  (`max_logit_diff`) beside what it saves on disk (`disk_bytes`, `size_table`).

Only Llama models with plain RoPE are written: the course's model and SmolLM2, not Llama 3.1, whose
"llama3" RoPE scaling llama.cpp's own converter handles.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch

GGUF_PIN = "gguf==0.19.0"  # as in requirements.txt
QTYPES = ("F32", "F16", "Q8_0")  # what write_gguf writes
DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # what merged_model and save_merged write
Q8_0_BLOCK = 32  # weights per Q8_0 block: one fp16 scale, 32 int8 values (34 bytes)

# Largest |logit| difference from the merged fp32 model, measured on the course model with a random
# rank-8 adapter on all seven Linear kinds (lora_B ~ N(0, 0.05)), 2 x 24 random tokens, 5 seeds
# (tests/test_export.py runs seed 0); its logits reach 13 to 18. Each bound is about twice the
# largest value measured.
GGUF_TOLERANCE = {  # write_gguf, then read_gguf
    "F32": 1e-5,   # measured 0.0 in all 5: the same float32 numbers, read back exactly
    "F16": 3e-2,   # measured 3.5e-3 to 1.2e-2
    "Q8_0": 5e-1,  # measured 1.2e-1 to 2.3e-1: about what bf16 costs (8 significant bits each)
}
MERGED_TOLERANCE = {  # save_merged in this dtype, reloaded with from_pretrained
    torch.bfloat16: 5e-1,  # measured 8.4e-2 to 2.9e-1
    torch.float16: 5e-2,   # measured 7.9e-3 to 1.9e-2
    torch.float32: 1e-4,   # measured 0.0 (merging itself moves logits by up to 2.0e-5)
}


# ------------------------------------------------------------------------------------------------
# Merging
# ------------------------------------------------------------------------------------------------

def merged_model(model, dtype: torch.dtype | None = None, adapter: str | None = None):
    """A plain transformers model with a LoRA adapter folded into its weights (W + (alpha/r) B A):
    the active one, or the one named `adapter`; in `dtype` (as it is when None).

    The merge runs on a deep copy, so `model` keeps its adapters (this needs memory for a second
    model). A model without an adapter is copied as it is.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, not {dtype}.")
    if adapter is not None and adapter not in (names := list(getattr(model, "peft_config", {}))):
        raise ValueError(f"No adapter called {adapter!r}: this model holds {', '.join(names) or 'none'}.")
    if _is_4bit(model):
        raise ValueError("This model's base is in 4-bit, and merging into 4-bit weights rounds "
                         "the adapter away: load the base in 16 bits, attach the adapter with "
                         "PeftModel.from_pretrained(base, adapter_folder), then merge that.")
    merged = copy.deepcopy(model)
    if hasattr(merged, "merge_and_unload"):  # a PeftModel
        merged = merged.merge_and_unload(adapter_names=None if adapter is None else [adapter])
    if dtype is not None:
        merged = merged.to(dtype)
    return merged.eval()


def save_merged(peft_model, tokenizer, folder: str | Path,
                dtype: torch.dtype = torch.bfloat16) -> Path:
    """Merge the adapter into a copy of the base, cast it to `dtype`, save model and tokenizer.

    `AutoModelForCausalLM.from_pretrained(folder)` loads the result without PEFT; `peft_model` is
    unchanged.
    """
    folder = Path(folder)
    merged = merged_model(peft_model, dtype)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    except OSError as err:
        raise RuntimeError(f"could not write the merged model to {folder} "
                           f"({err.strerror or err}); free some space or choose another folder"
                           ) from None
    return folder


def _is_4bit(model) -> bool:
    return any(type(m).__name__ in ("Linear4bit", "Params4bit") for m in model.modules())


# ------------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------------

def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for a q or k projection (`LlamaModel.permute`, convert_hf_to_gguf.py).

    transformers' Llama rotates the first half of each head against the second (`rotate_half`);
    llama.cpp rotates neighbouring pairs. Interleaving each head's two halves row by row makes
    llama.cpp's rotation pair the same numbers.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tokenizer, path: str | Path, qtype: str = "F16") -> Path:
    """Write a Llama model (a `LlamaForCausalLM`, adapter merged) as one GGUF file of type `qtype`.

    qtype: "F32", "F16" (2-D weights in fp16) or "Q8_0" (2-D weights whose rows are a multiple of
    32 long in 8-bit blocks, any others in F16). 1-D tensors (the RMSNorm weights) stay F32, as in
    llama.cpp. Returns the file's path; it is written beside it first and renamed when complete.

    The tokenizer goes into the file when GGUF can describe it exactly: a byte-level BPE such as
    SmolLM2's (`tokenizer.ggml.model` "gpt2" with its tokens, merges, special ids and chat
    template; `tokenizer.ggml.pre` names its pre-tokenizer: "gpt-2" for the local copy's, which
    transformers rebuilt from the package's GGUF, "smollm" for the Hub's, which splits digits
    apart). The course's own tokenizer is a word-level vocabulary, which no GGUF tokenizer type
    expresses: the file then says `tokenizer.ggml.model = "none"` (llama.cpp's word for a file
    without a vocabulary) and carries the weights only; the course tokenizer is used beside it.
    `tokenizer=None` writes a weights-only file too.
    """
    gguf = _import_gguf()
    qtype = str(qtype).strip().upper()
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, not {qtype!r}.")
    config = _llama_config(model)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    path = Path(path)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: without output.weight, llama.cpp and transformers use token_embd
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{name} has no GGUF name for a Llama; write_gguf writes the weights "
                             "of a plain LlamaForCausalLM only.")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if ".q_proj." in name:
            data = permute_rope(data, heads)
        elif ".k_proj." in name:
            data = permute_rope(data, kv_heads)
        tensors.append((gguf_name, *_encode(gguf, data, qtype)))

    file_types = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                  "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)  # transformers reads head_dim from this key
        writer.add_key_length(head_dim)  # llama.cpp's head size, where it isn't hidden / heads
        writer.add_value_length(head_dim)
        writer.add_file_type(file_types[qtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(gguf, writer, tokenizer, config.vocab_size)
        for gguf_name, data, raw_dtype in tensors:
            writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except OSError as err:
        raise RuntimeError(f"could not write {path} ({err.strerror or err}); free some space or "
                           "choose another folder") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _encode(gguf, data: np.ndarray, qtype: str):
    """(array, raw dtype) of one tensor as llama.cpp's converter stores it for this file type."""
    if qtype == "F32" or data.ndim == 1:
        return data.astype(np.float32), None
    if qtype == "Q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
        kind = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, kind), kind
    return data.astype(np.float16), None


def _llama_config(model):
    """The model's config, after checking that write_gguf can write the model."""
    if hasattr(model, "peft_config"):
        raise ValueError("write_gguf needs a plain model: merge the adapter first, with "
                         "merged_model(model) or save_merged(...).")
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        kind = getattr(config, "model_type", type(model).__name__)
        raise ValueError(f"write_gguf writes Llama models only (LlamaForCausalLM), not {kind!r}.")
    if _is_4bit(model):
        raise ValueError("write_gguf needs 16- or 32-bit weights, and this model is in 4-bit: "
                         "load it in 16 bits.")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"this model uses {rope_type!r} RoPE scaling, which write_gguf does not "
                         "write; run llama.cpp's convert_hf_to_gguf.py on the merged folder.")
    return config


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _add_tokenizer(gguf, writer, tokenizer, vocab_size: int) -> None:
    """The tokenizer's metadata as llama.cpp's converter writes a byte-level BPE; "none" else."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    pre = _byte_level_pre(spec)
    if spec.get("model", {}).get("type") != "BPE" or pre is None:
        writer.add_tokenizer_model("none")  # weights only: the vocabulary can't be written exactly
        return
    ids = tokenizer.get_vocab()
    if max(ids.values()) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(ids.values())}, beyond the model's "
                         f"{vocab_size} embeddings: pass the tokenizer the model was trained "
                         "with.")
    token_of = {i: t for t, i in ids.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):  # llama.cpp wants one entry per embedding row
        if i not in token_of:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token_of[i])
        if i not in added:
            types.append(gguf.TokenType.NORMAL)
        else:  # special added tokens (<|im_end|>) are llama.cpp's control tokens
            types.append(gguf.TokenType.CONTROL if added[i].special else
                         gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if getattr(tokenizer, f"{name}_token_id", None) is not None:
            add(getattr(tokenizer, f"{name}_token_id"))
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bos is not None and tokenizer("a")["input_ids"][:1] == [bos])
    writer.add_add_space_prefix(False)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _byte_level_pre(spec: dict) -> str | None:
    """llama.cpp's name for a byte-level pre-tokenizer it reproduces exactly, or None.

    "gpt-2": GPT-2's split alone. "smollm": each digit apart, then GPT-2's split (SmolLM2's).
    """
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    last = steps[-1] if steps else {}
    byte_level = kinds[-1:] == ["ByteLevel"] and last.get("use_regex", True)
    if not byte_level or last.get("add_prefix_space"):  # no prefix space: what llama.cpp does
        return None
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    return None


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """A GGUF file read back by transformers: an ordinary `LlamaForCausalLM`, weights dequantized.

    transformers parses the whole file twice (once for the config): about 30 s for SmolLM2 on a
    2-core CPU, most of it its 49,152-token vocabulary; well under a second for the course model.
    """
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = _existing(path)
    _import_gguf()
    # transformers from 5.2x keeps GGUF blocks packed unless asked; plain weights compare simply
    dense = ({"quantization_config": transformers.GgufConfig(dequantize=True)}
             if hasattr(transformers, "GgufConfig") else {})
    from transformers import modeling_gguf_pytorch_utils as reader  # its bar ignores the switch below
    bar = reader.tqdm
    hf_logging.disable_progress_bar()  # a bar per tensor tells a student nothing
    reader.tqdm = lambda items, **kwargs: items
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                     **dense)
    finally:
        hf_logging.enable_progress_bar()
        reader.tqdm = bar
    if getattr(model, "hf_quantizer", None) is not None:  # dense now: an ordinary model
        model.hf_quantizer.remove_quantization_config(model)
    return model.eval()


def read_gguf_tokenizer(path: str | Path):
    """The tokenizer a GGUF file carries, rebuilt by transformers; None when it carries none.

    `PreTrainedTokenizerFast` builds the same tokenizer as `AutoTokenizer` here, without reading
    the whole file for a config first (9 of SmolLM2's 10 seconds on a 2-core CPU).
    """
    from transformers import PreTrainedTokenizerFast

    path = _existing(path)
    if _tokenizer_model(path) in (None, "none", "no_vocab"):
        return None
    return PreTrainedTokenizerFast.from_pretrained(path.parent, gguf_file=path.name)


def _tokenizer_model(path: Path) -> str | None:
    """The file's `tokenizer.ggml.model`, or None when it has none."""
    try:  # transformers 5.2x reads the header alone, in a fraction of a second
        from transformers.integrations.gguf import read_gguf_metadata
    except ImportError:  # older ones: gguf's reader, which parses every field (seconds for 49k)
        field = _import_gguf().GGUFReader(path).get_field("tokenizer.ggml.model")
        return None if field is None else field.contents()
    return read_gguf_metadata(str(path))[0].get("tokenizer.ggml.model")


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"There is no GGUF file at {path}: run the cell that writes it.")
    return path


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise RuntimeError(f"writing and reading GGUF files needs the `gguf` package; run "
                           f"`pip install {GGUF_PIN}`") from None
    return gguf


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def max_logit_diff(model_a, model_b, input_ids: torch.Tensor) -> float:
    """The largest |difference| between two models' logits on the same tokens, in float32."""
    logits = []
    for model in (model_a, model_b):
        device = next(model.parameters()).device
        logits.append(model(input_ids=input_ids.to(device)).logits.float().cpu())
    if logits[0].shape != logits[1].shape:
        raise ValueError(f"the two models give logits of shapes {tuple(logits[0].shape)} and "
                         f"{tuple(logits[1].shape)}: compare a model with its own export.")
    return (logits[0] - logits[1]).abs().max().item()


def disk_bytes(path: str | Path) -> int:
    """Bytes on disk of a file, or of all files in a folder (recursively)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise FileNotFoundError(f"There is nothing at {path}: run the cell that writes it.")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def size_table(paths: dict[str, str | Path]) -> str:
    """One line per file or folder: its label, its size in MB and its share of the largest."""
    sizes = {label: disk_bytes(p) for label, p in paths.items()}
    largest = max(sizes.values(), default=0) or 1
    width = max((len(label) for label in sizes), default=0)
    return "\n".join(f"{label:<{width}}  {n / 1e6:9.2f} MB  {n / largest:6.1%}"
                     for label, n in sizes.items())
