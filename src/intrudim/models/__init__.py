"""What a model reference is and how to load it (DESIGN.md, "Layout").

Embedded names (``minilm``, ``smollm2``), local folders and ``.safetensors`` files, intrudim run directories,
a Trainer's ``output_dir`` and its ``checkpoint-N`` folders, Hugging Face Hub repo ids (``org/name[@revision]``)
and in-memory ``nn.Module`` / ``PeftModel`` objects all resolve here, and nowhere else.
"""
