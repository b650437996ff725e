"""``edgefleet demo``: simulated Pis (``simulate``: the documented fake sensors), the demo model
trained on synthetic roaster audio (``model``, ``train``, ``audio``) and the walk-through
itself (``scenario``).

May import: ``jobs`` and everything below it.
"""
