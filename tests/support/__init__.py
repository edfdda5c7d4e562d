"""What the tests share: servers and clients to start, fixtures' helpers, and ways to
wait for what a test expects instead of sleeping for it."""
