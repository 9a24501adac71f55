"""`genapi chat` picks its default model from GET /models: the first chat model."""
from genapi.chat_cli import first_chat_model


def test_the_default_model_is_the_first_chat_model():
    listed = [{"id": "minilm", "task": "embedding"}, {"id": "minilm-rerank", "task": "rerank"},
              {"id": "tiny", "task": "chat"}, {"id": "tiny-reasoning", "task": "chat"}]
    assert first_chat_model(listed) == "tiny"
    assert first_chat_model([{"id": "gpt-x"}]) == "gpt-x"  # another server: no task field
    assert first_chat_model(listed[:2]) is None and first_chat_model([]) is None
