"""Web control plane (Jinja2 pages, vendored static assets). The pages arrive with the web issue;
they will call the same services in orchestrator/ as the CLI does."""
