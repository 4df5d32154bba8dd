"""Prompt sets: Spec-Bench from ../shared and user JSONL files."""
