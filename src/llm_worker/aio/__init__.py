"""asyncio helpers every layer uses: tasks owned by whoever starts them, streams paced."""
