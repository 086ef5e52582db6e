"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) translated to chat completions."""

from fleetgate.api.anthropic.translator import CountTokensTranslator, MessagesTranslator

__all__ = ["CountTokensTranslator", "MessagesTranslator"]
