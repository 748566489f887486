"""Build-time tools (not installed): generators for the files in contrib/."""
