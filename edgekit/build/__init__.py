"""The build world: what needs TensorFlow. convert (converter.py), the SavedModel's
signatures and reference outputs (savedmodel.py), calibration and evaluation rows
(data.py), and one target per output format behind one interface (targets/)."""
