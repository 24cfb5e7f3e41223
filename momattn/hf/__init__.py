"""Hugging Face modeling file for momattn checkpoints exported with `python -m momattn.export`."""
