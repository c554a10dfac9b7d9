"""Helpers for the course "LoRA and QLoRA on Llama 3.1, from the architecture to a trained adapter".

One module per topic, in the order of the notebooks:
configs, architecture -> params, memory -> lora -> quantization -> data, training.
runtime (profiles), colab (setup cell), plots, widgets and exercises serve every notebook.
"""

import logging
import warnings

__version__ = "0.1.0"

# Notices that tell a student nothing and clutter the notebooks: bitsandbytes' note that an optional faster CPU
# kernel is absent (its own kernel gives the same numbers); the `kernels` package's note, when bitsandbytes asks
# it for that kernel with the Hub offline (transformers >= 5.25 installs `kernels`), that it skipped a trust check;
# a deprecation raised inside PEFT; and one transformers >= 5.25 raises for a field TRL's SFTConfig always sets.
# In Colab's set, with the torchao that the setup cell installs (colab.py), importing PEFT imports torchao, which
# logs that its compiled GPU kernels (built for other Pythons and GPUs) did not load and, through torch 2.11's
# pytree, that it registers enums in a deprecated way: five lines of a first import, nothing to act on.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
logging.getLogger("kernels").setLevel(logging.ERROR)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
warnings.filterwarnings("ignore", message=".*`gradient_checkpointing` is deprecated.*")
