"""Deploy: run the lab's models in ONNX Runtime on a CPU (FP32, QAT INT8 on torchao's grid, ORT's PTQ peer).

Heavy imports (onnx, onnxruntime) load on first use: `from labkit.deploy.onnx_export import export_qat_int8`.
"""
