"""Who may do what, and the record of what they did: API tokens, roles and browser sessions
(``auth``), the audit vocabulary every service writes its event in (``audit``).

May import: ``core``.
"""
