"""EdgeFleet control plane. Packages by concern, imports only go down (``lint-imports``):

``cli`` > ``demo`` > ``jobs`` > ``measure`` > ``present`` > ``fleet`` >
``artifacts`` | ``inventory`` > ``access`` > ``transport`` > ``core``.
docs/architecture.md says what lives where.
"""

__version__ = "0.1.0"
