"""Output formats: one module per target behind the same small shape
(an options dataclass validated before TensorFlow loads, and a convert function)."""
