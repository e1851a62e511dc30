"""Output formats: one module per target behind one interface (base.Target), so the
converter loops over them. A target is built for one convert job with its own options:

    tflite.TFLiteTarget(context, TFLiteOptions)   model_<variant>.tflite, checked in LiteRT
    tfjs.TfjsTarget(context, variants, shard_mb)  tfjs_<variant>/, checked in TF.js in Node.js
    onnx.OnnxTarget(context, OnnxOptions)         onnx/model.onnx, checked in onnxruntime

`TARGETS` is the registry: the converter asks each for its part of the job (Target.for_job),
in this order, which is also the manifest's order of artifacts.
"""
from edgekit.build.targets.onnx import OnnxTarget
from edgekit.build.targets.tfjs import TfjsTarget
from edgekit.build.targets.tflite import TFLiteTarget

TARGETS = (TFLiteTarget, TfjsTarget, OnnxTarget)
