"""MLflow: its runs, bounded waits, redaction and the fluent URI in one module (`client`), a new local
store's file (`sqlite_store`), and which code produced a result (`version`).
"""
