"""ONNX Runtime deployment of quantized models."""
