"""Editing methods: one module per paper, plus the baselines (SDEdit, Prompt-to-Prompt, InstructPix2Pix)."""
