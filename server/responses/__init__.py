"""Responses and conversations on top of the state store: items -> chat messages
(`items`), a response's parameters -> GenerateRequest (`request`), generation events ->
output items and response events (`output`), in-process runs and background tasks
(`runner`). The servicer is server/services/responses.py."""
