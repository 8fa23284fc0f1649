"""User-facing apps built on unimm's public API (the Gradio demo: `python -m apps.demo`)."""
