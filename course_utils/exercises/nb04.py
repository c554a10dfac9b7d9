"""Checkers for notebook 04, LoRA with PEFT on Llama. The answers come from the configs (closed form)."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.exercises import close, not_a_number, not_names, report
from course_utils.lora import lora_params
from course_utils.params import LINEAR_KINDS, MLP


def check_70b_all_linear(answer: int) -> bool:
    """Trainable parameters of LoRA with r = 16 and target_modules="all-linear" on Llama 3.1 70B."""
    n = lora_params(load_config("llama-3.1-70b"), 16, "all-linear")
    if not_a_number(answer):
        return False
    return report(close(answer, n), f"{n:,} trainable parameters: all seven projections in each of the 80 layers.",
                  "Build the 70B on the meta device and let PEFT count (get_peft_model(..., low_cpu_mem_usage=True)), "
                  "or add up r * (in + out) over the seven Linear layers and multiply by the number of layers.")


def check_mlp_targets(answer) -> bool:
    """A `target_modules` list that puts LoRA on every Linear of the MLP and on nothing else."""
    if isinstance(answer, str) or answer is None:
        return report(False, "", "Give a list of module names, like [\"q_proj\", \"v_proj\"] (that one is attention).")
    if not_names(answer, "module names"):
        return False
    names = set(answer)
    unknown = names - set(LINEAR_KINDS)
    hint = (f"{', '.join(sorted(unknown))} is not a Linear layer of Llama: the names are {', '.join(LINEAR_KINDS)}."
            if unknown else "The MLP of a decoder layer has three Linear layers; look at model.model.layers[0].mlp.")
    return report(names == set(MLP), "gate_proj, up_proj and down_proj: the whole MLP.", hint)


def check_adapter_megabytes(answer: float) -> bool:
    """Size in MB (10^6 bytes) of the 8B's adapter with r = 64 on q_proj and v_proj, stored in fp32."""
    n = lora_params(load_config("llama-3.1-8b"), 64, ["q_proj", "v_proj"])
    mb = n * 4 / 1e6
    if not_a_number(answer):
        return False
    return report(close(answer, mb, rel=0.01), f"{n:,} parameters x 4 bytes = {mb:,.1f} MB.",
                  "Count the trainable parameters first, then 4 bytes each (fp32), divided by 1e6.")
