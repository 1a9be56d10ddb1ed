"""The embedded engine: runs a plan on this machine."""
