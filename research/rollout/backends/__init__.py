"""Generation backends: Hugging Face ``generate`` (CPU default), vLLM, OpenAI-compatible HTTP."""
