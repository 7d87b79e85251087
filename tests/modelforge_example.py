"""The realistic model-forge config of shared/design/model-forge-today.md."""

from __future__ import annotations

from typing import Any


def copilot_auth(access_token: str, refresh_token: str) -> dict[str, Any]:
    """A device-flow token response as model-forge stores it (not all strings)."""
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "scope": "read:user",
        "expires_in": 28800,
        "refresh_token": refresh_token,
        "expires_at": "2025-07-28T20:00:00+00:00",
    }


def realistic_config(openai_key: str, copilot: dict[str, Any]) -> dict[str, Any]:
    """The example config, with the given secrets in its ``auth_data``."""
    return {
        "providers": {
            "openai": {
                "llm_type": "openai_compatible",
                "base_url": "https://api.openai.com/v1",
                "auth_strategy": "api_key",
                "models": {"gpt-4o": {"api_model_name": "gpt-4o"}},
                "auth_data": {"api_key": openai_key},
            },
            "github_copilot": {
                "llm_type": "github_copilot",
                "base_url": "https://api.githubcopilot.com",
                "auth_strategy": "device_flow",
                "auth_details": {
                    "client_id": "01ab8ac9400c4e429b23",
                    "device_code_url": "https://github.com/login/device/code",
                    "token_url": "https://github.com/login/oauth/access_token",
                    "scope": "read:user",
                },
                "models": {"claude-sonnet": {}},
                "auth_data": copilot,
            },
            "ollama": {
                "llm_type": "ollama",
                "base_url": "http://localhost:11434",
                "models": {"qwen3": {}},
            },
        },
        "current_model": {"provider": "openai", "model": "gpt-4o"},
        "settings": {"show_telemetry": True},
    }
