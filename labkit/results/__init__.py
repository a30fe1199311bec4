"""Result files: JSON written atomically, JSONL appended as each measurement finishes, device slugs, benchmark runs
(labkit.results.run), and the one loader of committed references, `load_reference(experiment)` (complete
full-profile runs only)."""

from labkit.results.files import REFERENCE_DIR, append_jsonl, command_line, device_slug, read_jsonl, write_json
from labkit.results.reference import is_reference, load_reference, reference_devices, reference_dir, result_profile

__all__ = [
    "REFERENCE_DIR", "append_jsonl", "command_line", "device_slug", "is_reference", "load_reference", "read_jsonl",
    "reference_devices", "reference_dir", "result_profile",
]
