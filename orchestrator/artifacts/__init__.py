"""What gets shipped to devices: bundles (build, manifest, golden outputs), the content-addressed
blob store, ONNX inspection, quantization, the Hugging Face hub cache, model references and
evaluation datasets.

May import: ``core``, ``agent.protocol``/``agent.build`` (the wire contract).
"""
