"""Function tools on the simulator's Responses API (`/v1/responses`), as vLLM serves them.

Input items become chat messages for the prompt: `message` items, `function_call` items (the model's earlier
calls, as an assistant's tool calls) and `function_call_output` items (as tool messages). Responses tools are
flat (`{"type": "function", "name", "parameters"}`); the chat tools the template and `pick_tool` take are
nested under `function`. A call the model makes is a `function_call` output item with its arguments as JSON
text, streamed as `response.function_call_arguments.delta` events.
"""

from __future__ import annotations

from typing import Any

from fleetgate.protocol import BadRequestError, random_id
from fleetgate.sim.scripts import Script

__all__ = ["call_item", "chat_input", "chat_tools", "tool_mode"]


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for t in tools or ():
        if t.get("type") != "function":
            continue  # built-in tools (web search, file search) have nothing to run them here
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError("a function tool needs a `name`", param="tools")
        fn = {"name": name, "parameters": t.get("parameters") or {"type": "object"}}
        if t.get("description"):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def tool_mode(choice: Any, tools: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """tool_choice as pick_tool takes it: ("none" | "auto" | "required" | None, a forced function's name)."""
    if choice is None or isinstance(choice, str):
        if choice not in (None, "none", "auto", "required"):
            raise BadRequestError(f"unknown tool_choice {choice!r}", param="tool_choice")
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(t["function"]["name"] == name for t in tools):
            raise BadRequestError(f"Tool '{name}' has not been passed in `tools`.", param="tool_choice")
        return None, str(name)
    raise BadRequestError("tool_choice must be none, auto, required or a function", param="tool_choice")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def chat_input(instructions: str | None, given: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    for item in given:
        kind = item.get("type", "message")
        if kind == "function_call":
            fn = {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", "{}"))}
            call = {"id": str(item.get("call_id", "")), "type": "function", "function": fn}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)  # parallel calls of one turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = _text(item.get("output"))
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": output})
        elif kind == "message":
            messages.append({"role": item.get("role", "user"), "content": _text(item.get("content"))})
        # reasoning items and others carry nothing the prompt needs
    return messages


def call_item(script: Script, item_id: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "call_id": script.call_id.replace("chatcmpl-tool-", "call_"),
        "name": script.tool_name,
        "arguments": arguments,
        "type": "function_call",
        "status": status,
    }


def new_item_id() -> str:
    return random_id("fc_")
