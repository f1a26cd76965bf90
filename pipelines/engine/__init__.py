"""The dataflow engine and the pipeline gateway, one process (docs/decisions/0020)."""
