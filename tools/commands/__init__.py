"""The Python behind each command script: tools/<name> runs tools/commands/<name>."""
