"""Layer 3, what a trained model is used for: photos, submissions, ONNX, the report, the web page."""
