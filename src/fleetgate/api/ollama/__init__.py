"""The Ollama API (`/api/*`) translated to OpenAI routes; the model listings are answered by the gateway."""

from fleetgate.api.ollama.translator import (
    ChatTranslator,
    EmbedTranslator,
    ErrorsTranslator,
    GenerateTranslator,
)

__all__ = ["ChatTranslator", "EmbedTranslator", "ErrorsTranslator", "GenerateTranslator"]
