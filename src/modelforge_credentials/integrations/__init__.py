"""Adapters that put other programs' secrets behind the agent.

Each adapter runs in the other program's own process; nothing here is
imported by the CLI, the agent or the keyring plugin.
"""
