"""The tiling explainer answers its controls: a step moves the outline and the running statistics, a block size
rebuilds the steps, the last step is softmax attention, and a choice outside the sliders is refused."""

from __future__ import annotations

import pytest

from labkit.checks import ClaimFailed
from labkit.widgets import TilingExplainer


def test_steps_and_block_sizes_redraw_the_figure():
    w = TilingExplainer(n=32, block_q=8, block_k=8)
    assert w.step_slider.max == 4 and w.prev_button.disabled
    before = (list(w.figure.data[2].y), w.figure.layout.shapes[0].x0, w.status.value)
    w.next_button.click()
    assert w.step_slider.value == 2
    assert list(w.figure.data[2].y) != before[0] and w.figure.layout.shapes[0].x0 == before[1] + 8
    assert "step 2 of 4" in w.status.value
    w.bk_slider.value = 4
    assert w.step_slider.max == 8 and w.step_slider.value == 1
    w.step_slider.value = 8
    assert w.next_button.disabled and "✓ last step" in w.status.value
    w.causal_box.value = True
    assert "causal" in w.figure.layout.title.text
    assert w.check().passed


def test_bad_choices_are_refused_and_a_broken_trace_fails_the_check():
    with pytest.raises(ValueError, match="block_q=5 is not one of the choices: 4, 8, 16, 32"):
        TilingExplainer(block_q=5)
    with pytest.raises(ValueError, match="n=20"):
        TilingExplainer(n=20)
    w = TilingExplainer()
    w.steps[-1].out[0, 0] += 1.0  # as if the last rescale were wrong
    with pytest.raises(ClaimFailed, match="last step == softmax attention"):
        w.check()
