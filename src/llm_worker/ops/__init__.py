"""Operations: logs, metrics, the redaction of secrets."""
