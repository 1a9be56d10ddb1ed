"""AWS: the ASL compiler, the SAM template builder, Lambda glue and triggers (boto3 only here)."""
