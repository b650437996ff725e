"""Which devices exist and how to reach them: the Ansible YAML inventory reader (``reader``,
``variables``, ``yaml_nodes``), device rows and selection (``devices``), and reloading an
inventory into the DB (``sync``).

May import: ``access``, ``transport``, ``core``.
"""
