"""Training recipes: flat scripts that compose TRL, PEFT and bitsandbytes, driven by YAML presets."""
