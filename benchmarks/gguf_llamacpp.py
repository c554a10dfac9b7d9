"""SmolLM2-135M-Instruct written as GGUF by course_utils.export, run in llama.cpp: does it load, does it answer as
transformers does, and how many tokens a second does it generate on this CPU?

    pip install llama-cpp-python        # compiles llama.cpp from source: many minutes on a 2-core machine
    python benchmarks/gguf_llamacpp.py  # F16 and Q8_0; --qtypes Q8_0 for one

A benchmark, not a test: CI never builds llama.cpp. The model is SmolLM2's local copy (course_utils.real_model) with
no adapter (notebook 09 exports the course's small model, whose word-level tokenizer GGUF can't carry). For each
file it prints its size, the greedy continuation of one prompt from llama.cpp and from transformers (reading the
same file back), whether the two agree, and llama.cpp's generation speed (median of --runs runs). One JSON line
at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, export, real_model  # noqa: E402

PROMPT = data.make_prompt("Can you block time for lunch with Maria in Paris on Tuesday at 3:30 pm?")


def transformers_tokens(model, tokenizer, prompt: str, n: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def llamacpp_run(path: Path, prompt: str, n: int, threads: int) -> tuple[list[int], float]:
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=threads, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    start, out = time.perf_counter(), []
    for token in llm.generate(tokens, temp=0.0, top_k=1):
        out.append(token)
        if len(out) == n:
            break
    return out, n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qtypes", nargs="+", default=["F16", "Q8_0"], choices=export.QTYPES)
    parser.add_argument("--tokens", type=int, default=32, help="tokens to generate (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per file (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: `pip install llama-cpp-python` compiles llama.cpp (many minutes).")
        return 1
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    folder = real_model.local_copy()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in args.qtypes:
            path = export.write_gguf(model, tokenizer, Path(tmp) / f"smollm2-{qtype.lower()}.gguf", qtype)
            reference = transformers_tokens(export.read_gguf(path), tokenizer, PROMPT, args.tokens)
            runs = [llamacpp_run(path, PROMPT, args.tokens, args.threads) for _ in range(args.runs)]
            tokens = runs[0][0]
            agree = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(tokens))
            rows.append({"qtype": qtype, "mb": round(path.stat().st_size / 1e6, 1),
                         "tokens_per_s": round(statistics.median(r[1] for r in runs), 1),
                         "same_tokens_as_transformers": agree, "of": args.tokens,
                         "llama_cpp": tokenizer.decode(tokens), "transformers": tokenizer.decode(reference)})
            print(f"{qtype}: {rows[-1]['mb']} MB, {rows[-1]['tokens_per_s']} tokens/s (median of {args.runs}), "
                  f"first {agree} of {args.tokens} tokens equal to transformers'\n  llama.cpp:    "
                  f"{rows[-1]['llama_cpp']!r}\n  transformers: {rows[-1]['transformers']!r}", flush=True)
    print(json.dumps({"benchmark": "gguf_llamacpp", "llama_cpp_python": llama_cpp.__version__,
                      "threads": args.threads, "prompt": PROMPT, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
