"""course_utils.lora held to PEFT: the closed-form count, the layer's output, merging, initialisation, errors."""

import copy
import io
import math
from contextlib import redirect_stdout

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig

from course_utils.architecture import empty_model, modules_by_kind, num_params, random_model
from course_utils.configs import known_names, load_config
from course_utils.params import ATTENTION, LINEAR_KINDS, MLP
from course_utils.lora import (LoRALinear, add_lora_layers, get_lora_model, linear_shape, lora_config, lora_layers,
                               lora_params, lora_summary, resolve_targets, target_kinds, target_module_table)
from course_utils.diagrams import draw_lora_to_scale  # noqa: E402

TINY = load_config("course-llama")


def peft_trainable(config: LlamaConfig, r: int, targets) -> tuple[int, int]:
    """PEFT's (trainable, all) count for LoRA on the meta-device model, adapters kept on the meta device."""
    targets = targets if isinstance(targets, str) else list(targets)
    model = get_peft_model(empty_model(config), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets),
                           low_cpu_mem_usage=True)
    return model.get_nb_trainable_parameters()


# ---------------------------------------------------------------------------------------------- the count

@pytest.mark.parametrize("name", known_names())
@pytest.mark.parametrize("targets", [ATTENTION, "all-linear"], ids=["qkvo", "all-linear"])
def test_lora_params_equals_peft_for_every_shipped_config(name, targets):
    config = load_config(name)
    assert lora_params(config, 16, targets) == peft_trainable(config, 16, targets)[0]


def test_the_published_8b_figure():
    """PEFT on the meta device (transformers 5.24, peft 0.21): r=32 on q,k,v,o gives `trainable params: 27,262,976 || all params: 8,057,524,224`."""
    config = load_config("llama-3.1-8b")
    model = get_peft_model(empty_model(config), LoraConfig(r=32, lora_alpha=64, target_modules=list(ATTENTION)),
                           low_cpu_mem_usage=True)
    with redirect_stdout(io.StringIO()) as out:
        model.print_trainable_parameters()
    assert "trainable params: 27,262,976 || all params: 8,057,524,224" in out.getvalue()
    assert lora_params(config, 32, ATTENTION) == 27_262_976


@st.composite
def llama_configs(draw):
    kv_heads = draw(st.integers(1, 4))
    heads = kv_heads * draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    explicit_head_dim = draw(st.booleans())  # some configs set head_dim != hidden / heads
    hidden = heads * head_dim * (draw(st.integers(1, 3)) if explicit_head_dim else 1)
    extra = {"head_dim": head_dim} if explicit_head_dim else {}
    return LlamaConfig(hidden_size=hidden, intermediate_size=draw(st.integers(8, 96)), num_attention_heads=heads,
                       num_key_value_heads=kv_heads, num_hidden_layers=draw(st.integers(1, 3)), vocab_size=64,
                       tie_word_embeddings=draw(st.booleans()), **extra)


target_sets = st.one_of(st.just("all-linear"),
                        st.lists(st.sampled_from(LINEAR_KINDS), min_size=1, max_size=7, unique=True))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=llama_configs(), r=st.integers(1, 64), targets=target_sets)
def test_lora_params_equals_peft_for_random_configs_and_targets(config, r, targets):
    smallest = min(min(linear_shape(config, k)) for k in target_kinds(targets))
    if r >= smallest:  # PEFT takes it; the course says it is no low-rank adapter
        with pytest.raises(ValueError, match=f"rank {r} >= min\\(in, out\\) = {smallest} of "):
            lora_params(config, r, targets)
        r = smallest - 1
    expected = peft_trainable(config, r, targets)[0]
    assert lora_params(config, r, targets) == expected
    assert num_params(add_lora_layers(empty_model(config), targets, r, 2 * r), trainable_only=True) == expected


def test_lora_summary_matches_print_trainable_parameters():
    config = load_config("llama-3.1-8b")
    trainable, total = peft_trainable(config, 8, MLP)
    s = lora_summary(config, 8, MLP, base_params=num_params(empty_model(config)), bytes_per_param=2)
    assert (s["trainable"], s["all"]) == (trainable, total)
    assert s["share"] == pytest.approx(trainable / total)
    assert s["megabytes"] == pytest.approx(trainable * 2 / 1e6)


def test_all_linear_takes_what_peft_takes_and_leaves_lm_head():
    model = get_peft_model(empty_model(TINY), LoraConfig(r=2, target_modules="all-linear"), low_cpu_mem_usage=True)
    peft_names = sorted(n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A"))
    ours = resolve_targets(empty_model(TINY), "all-linear")
    assert sorted(ours) == peft_names
    assert "lm_head" not in ours and "lm_head" in modules_by_kind(empty_model(TINY), torch.nn.Linear)
    rows = {row["kind"]: row for row in target_module_table(empty_model(TINY))}
    assert rows["lm_head"]["in all-linear"] is False and rows["q_proj"]["count"] == TINY.num_hidden_layers
    assert target_kinds("all-linear") == list(LINEAR_KINDS)


# ---------------------------------------------------------------------------------------------- the layer

def peft_and_ours(targets=("q_proj", "down_proj"), r=4, alpha=8, seed=0):
    """The same random model twice: PEFT's LoRA with nonzero B, and ours with PEFT's A and B copied in."""
    base = random_model(TINY, seed=seed)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets)))
    torch.manual_seed(seed + 1)
    for module in peft_model.modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.05)
    ours = add_lora_layers(copy.deepcopy(base), list(targets), r, alpha)
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            layer.A.copy_(peft_layers[name].lora_A["default"].weight)
            layer.B.copy_(peft_layers[name].lora_B["default"].weight)
    return base, peft_model.eval(), ours.eval(), peft_layers


def test_layer_output_equals_peft_with_the_same_matrices():
    _, _, ours, peft_layers = peft_and_ours()
    x = torch.randn(3, 5, TINY.hidden_size)
    name = "model.layers.1.self_attn.q_proj"
    with torch.no_grad():
        torch.testing.assert_close(lora_layers(ours)[name](x), peft_layers[name](x), rtol=1e-6, atol=1e-6)


def test_model_output_equals_peft_with_the_same_matrices():
    base, peft_model, ours, _ = peft_and_ours()
    ids = torch.randint(0, TINY.vocab_size, (2, 9))
    with torch.no_grad():
        ours_logits, peft_logits, base_logits = ours(ids).logits, peft_model(ids).logits, base(ids).logits
    torch.testing.assert_close(ours_logits, peft_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours_logits, base_logits, atol=1e-3), "a nonzero B must change the output"


def test_at_step_zero_the_adapted_model_equals_the_base():
    base = random_model(TINY, seed=3)
    adapted = add_lora_layers(copy.deepcopy(base), "all-linear", r=8, alpha=16, dropout=0.1).train()
    ids = torch.randint(0, TINY.vocab_size, (2, 7))
    with torch.no_grad():
        assert torch.equal(adapted(ids).logits, base.train()(ids).logits)


def test_merged_equals_unmerged_and_equals_peft_merge():
    _, peft_model, ours, peft_layers = peft_and_ours()
    ids = torch.randint(0, TINY.vocab_size, (2, 9))
    w_before = {n: l.base.weight.clone() for n, l in lora_layers(ours).items()}
    with torch.no_grad():
        unmerged = ours(ids).logits
        for layer in lora_layers(ours).values():
            layer.merge()
        torch.testing.assert_close(ours(ids).logits, unmerged, rtol=1e-5, atol=1e-5)
        merged_peft = peft_model.merge_and_unload()
        for name, layer in lora_layers(ours).items():
            torch.testing.assert_close(layer.base.weight, merged_peft.get_submodule(name).weight, rtol=1e-6, atol=1e-6)
            layer.unmerge()
            torch.testing.assert_close(layer.base.weight, w_before[name], rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="not merged"):
        next(iter(lora_layers(ours).values())).unmerge()


def test_delta_weight_equals_peft_and_has_rank_r():
    _, _, ours, peft_layers = peft_and_ours(r=3, alpha=5)
    name = "model.layers.0.mlp.down_proj"
    delta = lora_layers(ours)[name].delta_weight()
    torch.testing.assert_close(delta, peft_layers[name].get_delta_weight("default"), rtol=1e-6, atol=1e-7)
    assert torch.linalg.matrix_rank(delta) == 3


def test_initialisation_follows_peft():
    """A: kaiming-uniform(a=sqrt(5)), uniform on +-1/sqrt(in) like PEFT's lora_A; B: zeros like lora_B."""
    base = torch.nn.Linear(1024, 512, bias=False)
    peft_layer = get_peft_model(torch.nn.Sequential(copy.deepcopy(base)),
                                LoraConfig(r=16, lora_alpha=32, target_modules=["0"]))
    peft_a = peft_layer.base_model.model[0].lora_A["default"].weight.detach()
    peft_b = peft_layer.base_model.model[0].lora_B["default"].weight.detach()
    ours = LoRALinear(base, r=16, alpha=32)
    bound = 1 / math.sqrt(1024)
    for a in (ours.A.detach(), peft_a):
        assert a.shape == (16, 1024) and a.abs().max() <= bound and a.abs().max() > 0.99 * bound
    assert ours.A.std().item() == pytest.approx(peft_a.std().item(), rel=0.05)
    assert ours.A.mean().abs() < 0.05 * bound
    assert torch.equal(ours.B, torch.zeros_like(peft_b)) and peft_b.abs().max() == 0
    assert ours.scale == peft_layer.base_model.model[0].scaling["default"] == 2.0


def test_only_a_and_b_get_gradients_and_w_stays_bit_for_bit():
    layer = LoRALinear(torch.nn.Linear(32, 16), r=4, alpha=8)
    w = layer.base.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = layer(torch.randn(8, 32)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.A.grad is not None and layer.B.grad is not None
    assert torch.equal(layer.base.weight, w)
    assert layer.B.abs().max() > 0


# ---------------------------------------------------------------------------------------------- bad input

def test_a_missing_target_lists_the_names_the_model_has():
    n = TINY.num_hidden_layers
    with pytest.raises(ValueError, match=rf"no module called 'q_prj'.*q_proj \({n}x\).*down_proj \({n}x\)"):
        add_lora_layers(random_model(TINY), ["q_proj", "q_prj"], 4, 8)
    with pytest.raises(ValueError, match="has no Linear layer called 'qkv'.*gate_proj"):
        lora_params(TINY, 8, ["qkv"])
    with pytest.raises(ValueError, match="LlamaAttention.*q_proj, k_proj, v_proj, o_proj"):
        resolve_targets(empty_model(TINY), ["self_attn"])
    with pytest.raises(ValueError, match="RMSNorm"):
        resolve_targets(empty_model(TINY), ["input_layernorm"])
    with pytest.raises(ValueError, match=r"as a list: target_modules=\['q_proj'\]"):
        lora_config(empty_model(TINY), 8, 16, "q_proj")


@pytest.mark.parametrize("r, alpha, error, words", [
    (0, 16, ValueError, "rank r must be at least 1"), (-4, 16, ValueError, "rank r must be at least 1"),
    (8.0, 16, TypeError, "whole number"), (8, 0, ValueError, "lora_alpha must be positive"),
    (8, -2, ValueError, "lora_alpha must be positive")])
def test_bad_rank_or_alpha_gets_a_clear_error(r, alpha, error, words):
    makers = [lambda: LoRALinear(torch.nn.Linear(4, 4), r, alpha), lambda: lora_config(empty_model(TINY), r, alpha, ["q_proj"])]
    if alpha > 0:  # lora_params takes no alpha
        makers.append(lambda: lora_params(TINY, r, "all-linear"))
    for make in makers:
        with pytest.raises(error, match=words):
            make()


def test_a_rank_at_or_above_the_layer_size_is_refused_with_a_sentence():
    """TINY (the course's model): q_proj is 192 -> 384, k_proj 192 -> 192. PEFT would take r = 512 silently."""
    sentence = r"rank 512 >= min\(in, out\) = 192 of q_proj: a low-rank adapter must be smaller than the layer; pick r < 192"
    with pytest.raises(ValueError, match=sentence):
        lora_config(empty_model(TINY), 512, 16, ["q_proj"])
    with pytest.raises(ValueError, match=sentence):
        lora_params(TINY, 512, ["q_proj"])
    with pytest.raises(ValueError, match=r"rank 192 >= min\(in, out\) = 192 of q_proj"):
        lora_config(empty_model(TINY), 192, 384, "all-linear")
    with pytest.raises(ValueError, match=r"rank 96 >= min\(in, out\) = 96 of nn.Linear\(192, 96\)"):
        LoRALinear(torch.nn.Linear(192, 96), r=96, alpha=192)
    assert LoRALinear(torch.nn.Linear(192, 96), r=95, alpha=190).A.shape == (95, 192)
    model = random_model(TINY)
    with pytest.raises(ValueError, match="of q_proj"):
        add_lora_layers(model, ["q_proj", "k_proj"], r=200, alpha=400)
    assert not lora_layers(model), "nothing is swapped before the check"
    with pytest.raises(ValueError, match=r"rank 200 >= min\(in, out\) = 192 of q_proj"):
        get_lora_model(empty_model(TINY), LoraConfig(r=200, lora_alpha=16, target_modules=["q_proj"]))
    smol = load_config("smollm2-135m")  # q_proj 576 -> 576, k_proj 576 -> 192: the smallest target is named
    with pytest.raises(ValueError, match=r"rank 200 >= min\(in, out\) = 192 of k_proj"):
        lora_params(smol, 200, ["q_proj", "k_proj"])
    assert lora_params(TINY, 191, ["k_proj"]) == TINY.num_hidden_layers * 191 * (192 + 192)


def test_peft_errors_are_said_plainly():
    model = empty_model(TINY)
    with pytest.raises(ValueError, match="rank r must be at least 1"):
        get_lora_model(model, LoraConfig(r=0, lora_alpha=16, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="no module called 'q_prj'"):  # PEFT itself would skip the typo silently
        get_lora_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "q_prj"]))
    with pytest.raises(ValueError, match="can't put LoRA on a LlamaRMSNorm.*q_proj") as info:  # PEFT's own error
        get_lora_model(empty_model(TINY), LoraConfig(r=4, lora_alpha=8, target_modules=r".*input_layernorm"))
    assert "is not supported" not in str(info.value)
    with pytest.raises(ValueError, match="found none of the target modules.*pattern"):
        get_lora_model(empty_model(TINY), LoraConfig(r=4, lora_alpha=8, target_modules=r".*q_prj"))
    with pytest.raises(ValueError, match=r"target_modules=\['v_proj'\]"):
        get_lora_model(empty_model(TINY), LoraConfig(r=4, lora_alpha=8, target_modules="v_proj"))


def test_get_lora_model_keeps_a_meta_model_on_meta_and_counts_like_peft():
    config = load_config("llama-3.2-1b")
    model = get_lora_model(empty_model(config), lora_config(empty_model(config), 8, 16, ["q_proj", "v_proj"]))
    assert all(p.is_meta for p in model.parameters())
    assert model.get_nb_trainable_parameters()[0] == lora_params(config, 8, ["q_proj", "v_proj"])


# ---------------------------------------------------------------------------------------------- the picture

def test_picture_is_to_scale():
    import matplotlib
    matplotlib.use("Agg")
    ax = draw_lora_to_scale(4096, 1024, 32)
    w, b, a, ba = (next(p for p in ax.patches if p.get_label() == k) for k in ("W", "B", "A", "B A"))
    assert (ba.get_width(), ba.get_height()) == pytest.approx((w.get_width(), w.get_height()))
    assert w.get_width() / w.get_height() == pytest.approx(4096 / 1024)
    assert b.get_height() == pytest.approx(w.get_height()) and b.get_width() / w.get_width() == pytest.approx(32 / 4096)
    assert a.get_width() == pytest.approx(w.get_width()) and a.get_height() == pytest.approx(b.get_width())
    assert f"{32 * (4096 + 1024):,}" in " ".join(t.get_text() for t in ax.texts)


def test_layer_on_a_4bit_base_equals_peft(tmp_path):
    """QLoRA's case: the frozen base is bitsandbytes' NF4 Linear4bit; A and B stay float32 as in PEFT."""
    from transformers import AutoModelForCausalLM

    from course_utils.quantization import bitsandbytes_problem, bnb_4bit_config
    if bitsandbytes_problem():
        pytest.skip(bitsandbytes_problem())
    random_model(TINY).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=bnb_4bit_config(torch.float32),
                                                 device_map="cpu", dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"]))
    layer = peft_model.base_model.model.model.layers[0].self_attn.v_proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    ours = LoRALinear(layer.base_layer, r=4, alpha=8)
    assert ours.A.dtype == torch.float32 and not layer.base_layer.weight.dtype.is_floating_point
    with torch.no_grad():
        ours.A.copy_(layer.lora_A["default"].weight)
        ours.B.copy_(layer.lora_B["default"].weight)
        x = torch.randn(2, 3, TINY.hidden_size)
        torch.testing.assert_close(ours(x), layer(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="quantized"):
        ours.merge()


def test_weights_bytes_on_disk(tmp_path):
    from course_utils.lora import weights_bytes_on_disk
    random_model(TINY).save_pretrained(tmp_path)
    assert weights_bytes_on_disk(str(tmp_path)) == (tmp_path / "model.safetensors").stat().st_size
    assert weights_bytes_on_disk(str(tmp_path / "nothing-here")) is None


# ---------------------------------------------------------------------------------------------- exercises

def test_exercise_checkers_accept_the_answer_and_reject_the_blank():
    from course_utils.exercises import nb03, nb04
    c8, c70 = load_config("llama-3.1-8b"), load_config("llama-3.1-70b")
    with redirect_stdout(io.StringIO()):
        assert nb03.check_down_proj_count(lora_params(c8, 16, ["down_proj"]))
        assert not nb03.check_down_proj_count(None)
        assert nb03.check_break_even_rank(4096 * 4096 / (4096 + 4096)) and not nb03.check_break_even_rank(4096)
        assert nb03.check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T + (alpha / r) * (x @ A.T @ B.T))
        assert not nb03.check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T)
        assert not nb03.check_lora_forward(lambda x, W, A, B, alpha, r: x @ B)  # a shape error is reported, not raised
        assert not nb03.check_lora_forward(None)
        m70 = get_peft_model(empty_model(c70), LoraConfig(r=16, target_modules="all-linear"), low_cpu_mem_usage=True)
        assert nb04.check_70b_all_linear(m70.get_nb_trainable_parameters()[0]) and not nb04.check_70b_all_linear(None)
        assert nb04.check_mlp_targets(["down_proj", "gate_proj", "up_proj"])
        assert not nb04.check_mlp_targets(["gate_proj", "up_proj"]) and not nb04.check_mlp_targets("mlp")
        assert not nb04.check_mlp_targets(None)
        mb = lora_params(c8, 64, ["q_proj", "v_proj"]) * 4 / 1e6
        assert nb04.check_adapter_megabytes(mb) and not nb04.check_adapter_megabytes(mb * 2)

