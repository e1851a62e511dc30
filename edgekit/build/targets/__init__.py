"""Output formats: one module per target behind one interface (base.Target), so the
converter loops over them. A target is built for one convert job with its own options:

    tflite.TFLiteTarget(context, TFLiteOptions)   model_<variant>.tflite, checked in LiteRT
    tfjs.TfjsTarget(context, variants, shard_mb)  tfjs_<variant>/, checked in TF.js in Node.js
    onnx.OnnxTarget(context, OnnxOptions)         onnx/model.onnx, checked in onnxruntime
"""
