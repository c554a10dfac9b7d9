"""Helpers for the course "LoRA and QLoRA on Llama 3.1, from the architecture to a trained adapter".

One module per topic, in the order of the notebooks:
configs, architecture -> params, memory -> lora -> quantization -> data, training.
runtime (profiles), colab (setup cell), plots, widgets and exercises serve every notebook.
"""

__version__ = "0.1.0"
