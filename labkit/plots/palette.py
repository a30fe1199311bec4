"""The lab's one colour palette: every figure takes its colours from here, so a backend, a variant or a method
has the same colour in every notebook."""

GREY, BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, OLIVE, CYAN = (
    "#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#bcbd22", "#17becf")

SERIES = (GREY, BLUE, GREEN, RED, ORANGE, PURPLE, BROWN, OLIVE, CYAN)
"""Colours in order, for series that have no fixed colour (the first is the baseline's grey)."""

BACKEND_COLORS = {"eager": RED, "sdpa": BLUE, "fa2": GREEN, "flash-attn": PURPLE, "cudnn": ORANGE,
                  "efficient": CYAN, "math": BROWN}
"""Attention backends (notebook 02)."""

VARIANT_COLORS = {"fp32": GREY, "fp32-extra": OLIVE, "ptq-dynamic": BLUE, "ptq-static": ORANGE, "qat": GREEN}
"""Notebook 01's variants."""

METHOD_COLORS = {"float": GREY, "ptq": BLUE, "qat": GREEN}
"""Quantization methods (notebook 03: float, PTQ, QAT)."""

