"""Prompt sets shipped in the package (Spec-Bench, SpecKV's reference records) and user JSONL files."""
