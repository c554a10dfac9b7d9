"""Helpers for the course "LoRA and QLoRA on Llama 3.1, from the architecture to a trained adapter".

One module per topic, in the order of the notebooks:
configs, architecture -> params, memory -> lora -> quantization -> data, training.
runtime (profiles), colab (setup cell), plots, widgets and exercises serve every notebook.
"""

import logging
import warnings

__version__ = "0.1.0"

# Two notices that tell a student nothing and clutter the notebooks: bitsandbytes' note that an optional faster
# CPU kernel package is absent (its own kernel gives the same numbers), and a deprecation raised inside PEFT.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
