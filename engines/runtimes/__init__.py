"""The runtimes behind the recurrent driver, one module each: where a stage runs.

- :mod:`.onnxruntime`: exported graphs in ONNX Runtime sessions, numpy arrays, no PyTorch
  (:mod:`.onnxruntime_gda_split` runs the steps with GDA around the fused CPU kernel);
- :mod:`.tensorrt`: engines through Polygraphy's ``TrtRunner``, torch CUDA tensors;
- :mod:`.pytorch`: the eager network; :mod:`.pytorch_cuda`: on a CUDA GPU, float32 or float16;
- :mod:`.runner_stages`: the driver's stage interface over one runner per stage graph.
"""
