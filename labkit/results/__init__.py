"""Result files: JSON written atomically, JSONL appended as each measurement finishes, device slugs, and the one
loader of committed references, `load_reference(experiment)` (complete full-profile runs only)."""

from labkit.results.files import (
    REFERENCE_DIR,
    append_jsonl,
    command_line,
    default_out,
    device_slug,
    read_jsonl,
    write_json,
)
from labkit.results.reference import (
    is_reference,
    load_reference,
    reference_devices,
    reference_dir,
    result_profile,
    upgrade_rows,
)

__all__ = [
    "REFERENCE_DIR", "append_jsonl", "command_line", "default_out", "device_slug", "is_reference", "load_reference",
    "read_jsonl", "reference_devices", "reference_dir", "result_profile", "upgrade_rows", "write_json",
]
