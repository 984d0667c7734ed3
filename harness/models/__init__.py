"""Where base models come from (the embedded default, local folders) and GGUF export."""
