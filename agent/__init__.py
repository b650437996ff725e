"""EdgeFleet device agent.

Runs ON the device (Python >= 3.9, stdlib + numpy + onnxruntime only) and imports nothing from the
control plane. Shipped as a zipapp; talks JSON lines on stdout (see ``agent.protocol``).
"""

__version__ = "0.1.0"
