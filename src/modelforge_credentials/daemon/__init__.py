"""The asyncio credential agent: state and dispatch, socket server, service glue."""
