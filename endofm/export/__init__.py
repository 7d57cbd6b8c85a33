"""Deployment: ``endofm export`` (:func:`endofm.export.onnx.export_onnx`, needs PyTorch) and the exported models
in ONNX Runtime (:mod:`endofm.export.runtime`, no PyTorch)."""
