"""Sealing sensitive values: a protocol with local (Fernet key file) and KMS siblings, like `stores`.

Sensitive inputs are sealed in a run's resume record and in a Step Functions execution input,
and opened only where they are used.
"""
