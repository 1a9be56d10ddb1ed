"""Templates: sandboxed Jinja rendering, conditions, safe script rendering, reference scanning."""
