"""Workstation-only engines: TF.js in Node.js and onnxruntime. convert's checks and bench
both run artifacts with them, so neither has to import the other; a device never needs them
(what runs on a device is edgekit.runtime)."""
