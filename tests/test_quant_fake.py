"""The from-scratch fake quantizer: values land on the INT8 grid, gradients pass straight through."""

from __future__ import annotations

import torch

from labkit.quant.fake import fake_quantize, fake_quantize_tensor, qparams, quantize


def test_fake_quant_changes_values_onto_the_grid():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    x_hat, scale, zp = fake_quantize_tensor(x, dim=0)
    assert not torch.equal(x_hat, x), "fake quantization must change values"
    codes = (x_hat / scale + zp)
    assert torch.allclose(codes, codes.round(), atol=1e-3), "dequantized values must sit on the INT8 grid"
    assert (x_hat - x).abs().max() <= scale.max() / 2 + 1e-6, "error at most half a step inside the range"
    assert scale.shape == (4, 1) and torch.all(zp == 0)


def test_ste_passes_gradient_inside_range_and_blocks_clipped_values():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.3, 0.9, 5.0], requires_grad=True)
    scale, zp = torch.tensor(1 / 127), torch.tensor(0.0)  # grid covers about [-1, 1]
    y = fake_quantize(x, scale, zp)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 1, 0])), x.grad


def test_asymmetric_qparams_cover_the_range_and_zero():
    x = torch.linspace(0.5, 6.0, 100)  # all positive: the grid must still contain 0 exactly
    scale, zp, qmin, qmax = qparams(x, symmetric=False)
    q = quantize(x, scale, zp, qmin, qmax)
    assert q.dtype == torch.int8 and int(q.min()) >= qmin and int(q.max()) == qmax
    assert float(fake_quantize(torch.zeros(1), scale, zp, qmin, qmax)) == 0.0
