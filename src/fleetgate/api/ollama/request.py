"""Ollama requests as OpenAI requests: `/api/chat` and `/api/generate` onto chat completions (a `raw`
generate onto completions), `/api/embed` and `/api/embeddings` onto embeddings.

Ollama's `options` are renamed to the OpenAI (and vLLM) fields with the same meaning; the ones about how
Ollama itself loads and runs a model (`num_ctx`, `num_gpu`, `num_thread`, `keep_alive` ...) mean nothing to a
vLLM fleet and are ignored. Tool calls carry their arguments as objects in Ollama and as JSON strings in
OpenAI; tool results name their tool, not a call id, so ids are made up and matched by name, in order.
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetgate.api.translation import expect
from fleetgate.protocol import BadRequestError, lax_bool

__all__ = ["chat_request", "embed_request", "generate_request", "sampling"]

# Ollama option -> the OpenAI/vLLM field of the same meaning.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
    "stop": "stop",
}

# Image bytes (base64) by their first characters: vLLM needs a data URL, Ollama sends bare base64.
_IMAGE_TYPES = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif", "UklGR": "image/webp"}


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model is required", param="model")
    return model


def streamed(body: dict[str, Any]) -> bool:
    """Ollama streams unless told not to."""
    given = body.get("stream")
    return True if given is None else lax_bool(given, "stream")


def sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    """`options` and `format` onto `out`."""
    options = body.get("options")
    if options is not None:
        for name, value in expect(options, dict, "options").items():
            if value is None:
                continue
            if name in _OPTIONS:
                out[_OPTIONS[name]] = value
            elif name == "num_predict":
                limit = expect(value, int, "options.num_predict")
                if limit > 0:  # -1 (forever) and -2 (fill the context) leave the pool's default
                    out["max_tokens"] = limit
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise BadRequestError('format must be "json" or a JSON schema', param="format")


def _image(data: Any) -> dict[str, Any]:
    b64 = expect(data, str, "images")
    media = next((t for prefix, t in _IMAGE_TYPES.items() if b64.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{b64}"}}


def _content(text: str, images: Any) -> Any:
    if not images:
        return text
    return [{"type": "text", "text": text}, *(_image(i) for i in expect(images, list, "images"))]


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, tool name) not yet answered
    made = 0
    for i, m in enumerate(messages):
        expect(m, dict, f"messages[{i}]")
        role = expect(m.get("role"), str, f"messages[{i}].role")
        text = m.get("content") or ""
        expect(text, str, f"messages[{i}].content")
        msg: dict[str, Any] = {"role": role, "content": _content(text, m.get("images"))}
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for call in expect(m["tool_calls"], list, f"messages[{i}].tool_calls"):
                fn = expect(expect(call, dict, "tool_calls").get("function"), dict, "tool_calls.function")
                name = expect(fn.get("name"), str, "tool_calls.function.name")
                arguments = fn.get("arguments") or {}
                made += 1
                call_id = f"call_{made}"
                pending.append((call_id, name))
                args = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
                calls.append(
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                )
            msg["tool_calls"] = calls
            msg["content"] = text or None
        elif role == "tool":
            name = m.get("tool_name") or m.get("name")
            match = next((p for p in pending if p[1] == name), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                msg["tool_call_id"] = match[0]
            else:
                made += 1
                msg["tool_call_id"] = f"call_{made}"
        out.append(msg)
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for t in expect(tools, list, "tools"):
        fn = expect(expect(t, dict, "tools").get("function"), dict, "tools.function")
        expect(fn.get("name"), str, "tools.function.name")
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})
    return out


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model_of(body),
        "messages": chat_messages(expect(body.get("messages") or [], list, "messages")),
    }
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    sampling(body, out)
    return out


def generate_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The upstream path and body of an `/api/generate`: the model's chat template around the prompt (and
    system prompt), as Ollama applies the model's template; with `raw` the prompt goes as it is."""
    prompt = expect(body.get("prompt") or "", str, "prompt")
    out: dict[str, Any] = {"model": model_of(body)}
    if body.get("suffix"):
        raise BadRequestError("suffix (fill-in-the-middle) is not supported by this gateway", param="suffix")
    if lax_bool(body.get("raw"), "raw"):
        out["prompt"] = prompt
        sampling(body, out)
        return "/v1/completions", out
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": expect(system, str, "system")})
    messages.append({"role": "user", "content": _content(prompt, body.get("images"))})
    out["messages"] = messages
    sampling(body, out)
    return "/v1/chat/completions", out


def embed_request(body: dict[str, Any], legacy: bool) -> dict[str, Any]:
    """`/api/embed` (`input`: a text or a list) or the older `/api/embeddings` (`prompt`: one text)."""
    given = body.get("prompt") if legacy else body.get("input")
    name = "prompt" if legacy else "input"
    if given is None:
        raise BadRequestError(f"{name} is required", param=name)
    if isinstance(given, list):
        for item in given:
            expect(item, str, name)
    else:
        expect(given, str, name)
    out: dict[str, Any] = {"model": model_of(body), "input": given}
    if body.get("dimensions") is not None:
        out["dimensions"] = expect(body["dimensions"], int, "dimensions")
    return out
