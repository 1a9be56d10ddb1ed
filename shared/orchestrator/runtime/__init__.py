"""Runtime: what happens inside one task, shared by the embedded engine and the Lambda handlers."""
