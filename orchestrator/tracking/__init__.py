"""MLflow: every MLflow detail in one module (`client`: runs, bounded waits, redaction, the fluent URI) and
which code produced a result (`version`).
"""
