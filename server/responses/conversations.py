"""Conversation items in the store."""
from __future__ import annotations

import asyncio

from ..store import ConversationItem, Store
from .items import item_to_json


async def append_items(store: Store, conversation_id: str, items) -> None:
    """Appends `items` (genapi.v1.Item with ids) to the conversation, in order."""
    rows = [ConversationItem(conversation_id, i.id, item_to_json(i)) for i in items]
    if rows:
        await asyncio.to_thread(store.add_conversation_items, conversation_id, rows)
