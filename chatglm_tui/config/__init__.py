"""Configuration: typed settings (defaults, the TOML file, `CHATGLM_*` variables) and in-place edits of the file."""
