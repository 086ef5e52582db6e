"""Bodies and SSE chunks laid out byte for byte as vLLM 0.26 writes them (key order included)."""

from __future__ import annotations

import random
from typing import Any

import orjson

from fleetgate.protocol import SSE_DONE, Usage, random_id, sse_event

FINGERPRINT = "vllm-0.26.0-nohash"

_CHUNK_TAIL_NULLS = {"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None}
_BODY_TAIL_NULLS = {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class _Chunks:
    """What the chunks of a chat and a completion stream share: the head, the spliced prefix of the hot
    path, the last chunk of a choice and the usage chunk."""

    OBJECT = ""

    def __init__(self, rid: str, created: int, model: str) -> None:
        self.head = {"id": rid, "object": self.OBJECT, "created": created, "model": model}
        self._prefix = _dumps(self.head)[:-1] + b',"choices":[{"index":'

    def _last(self, choice: dict[str, Any], fingerprint: bool) -> bytes:
        body: dict[str, Any] = {**self.head, "choices": [choice]}
        if fingerprint:
            body["system_fingerprint"] = FINGERPRINT
        return sse_event(_dumps(body))

    def usage(self, usage: Usage) -> bytes:
        body = {**self.head, "choices": [], "usage": usage.to_dict(with_details=False)}
        body["system_fingerprint"] = FINGERPRINT
        return sse_event(_dumps(body))


class ChatChunks(_Chunks):
    """Encodes the chunks of one chat stream; the content chunk is the hot path, so it is spliced."""

    OBJECT = "chat.completion.chunk"

    def role(self, index: int) -> bytes:
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        choice["finish_reason"] = None
        return sse_event(
            _dumps({**self.head, "choices": [choice], "prompt_token_ids": None, "prompt_text": None})
        )

    def content(self, index: int, text: str, logprobs: Any = None) -> bytes:
        if logprobs is None:
            return b"".join(
                (
                    b"data: ",
                    self._prefix,
                    str(index).encode(),
                    b',"delta":{"content":',
                    _dumps(text),
                    b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n',
                )
            )
        return self.delta(index, {"content": text}, logprobs)

    def delta(self, index: int, delta: dict[str, Any], logprobs: Any = None) -> bytes:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": None,
            "token_ids": None,
        }
        return sse_event(_dumps({**self.head, "choices": [choice]}))

    def finish(
        self,
        index: int,
        delta: dict[str, Any],
        reason: str,
        stop_reason: str | int | None,
        fingerprint: bool,
        logprobs: Any = None,
    ) -> bytes:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": reason,
            "stop_reason": stop_reason,
            "token_ids": None,
        }
        return self._last(choice, fingerprint)


class CompletionChunks(_Chunks):
    OBJECT = "text_completion"

    def text(self, index: int, text: str, logprobs: Any = None) -> bytes:
        if logprobs is None:
            return b"".join(
                (
                    b"data: ",
                    self._prefix,
                    str(index).encode(),
                    b',"text":',
                    _dumps(text),
                    b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                    b'"prompt_token_ids":null,"token_ids":null}]}\n\n',
                )
            )
        return self.finish(index, text, None, None, False, logprobs)

    def finish(
        self,
        index: int,
        text: str,
        reason: str | None,
        stop_reason: str | int | None,
        fingerprint: bool,
        logprobs: Any = None,
    ) -> bytes:
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": reason,
            "stop_reason": stop_reason,
            "prompt_token_ids": None,
            "token_ids": None,
        }
        return self._last(choice, fingerprint)


DONE = SSE_DONE


def model_card(name: str, root: str, parent: str | None, max_len: int | None, created: int) -> dict[str, Any]:
    """One entry of /v1/models."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_len,
        "permission": [
            {
                "id": random_id("modelperm-"),
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


def chat_message(content: str | None, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
    }
    if tool_calls:
        msg["tool_calls"] = tool_calls
    msg["reasoning"] = None
    return msg


def chat_body(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], usage: Usage
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": FINGERPRINT,
        "usage": usage.to_dict(),
        **_CHUNK_TAIL_NULLS,
        **_BODY_TAIL_NULLS,
    }


def chat_choice(
    index: int, message: dict[str, Any], logprobs: Any, reason: str, stop_reason: str | int | None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": reason,
        "stop_reason": stop_reason,
        "token_ids": None,
        "routed_experts": None,
    }


def completion_body(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], usage: Usage
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": FINGERPRINT,
        "usage": usage.to_dict(),
        **_BODY_TAIL_NULLS,
    }


def completion_choice(
    index: int, text: str, logprobs: Any, reason: str, stop_reason: str | int | None
) -> dict[str, Any]:
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": reason,
        "stop_reason": stop_reason,
        "token_ids": None,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "routed_experts": None,
    }


def token_logprob(text: str, rng: random.Random, top: int) -> dict[str, Any]:
    """A chat logprobs entry; a random-weight model is near-uniform over its vocabulary (~ -11.76)."""
    lp = -11.76 - rng.random() * 1e-4
    entry: dict[str, Any] = {"token": text, "logprob": lp, "bytes": list(text.encode())}
    alts = [{"token": text, "logprob": lp, "bytes": list(text.encode())}]
    for k in range(1, top):
        alt = f"<r{rng.randrange(1, 128000)}>"
        alts.append({"token": alt, "logprob": lp - k * 1e-6, "bytes": list(alt.encode())})
    entry["top_logprobs"] = alts[:top]
    return entry


def completion_logprobs(texts: list[str], rng: random.Random, offset: int, top: int) -> dict[str, Any]:
    """Legacy completions logprobs; `top_logprobs` has the sampled token plus `top - 1` alternatives."""
    offsets = []
    lps = []
    tops = []
    pos = offset
    for t in texts:
        offsets.append(pos)
        pos += len(t)
        lp = -11.76 - rng.random() * 1e-4
        lps.append(lp)
        alts = {t: lp}
        while len(alts) < max(top, 1):
            alts[f"<r{rng.randrange(1, 128000)}>"] = lp - len(alts) * 1e-6
        tops.append(alts)
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": texts, "top_logprobs": tops}


def response_body(
    rid: str,
    mid: str,
    created: int,
    model: str,
    text: str,
    status: str,
    max_output_tokens: int | None,
    temperature: float,
    top_p: float,
    usage: Usage,
    calls: list[dict[str, Any]] | None = None,
    tool_choice: Any = "none",
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Responses body; `calls` (function_call items) stand in for the message when the model called."""
    output: list[dict[str, Any]] = []
    if status != "in_progress" and calls:
        output = calls
    elif status != "in_progress":
        content: list[dict[str, Any]] = [
            {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
        ]
        output.append(
            {
                "id": mid,
                "content": content,
                "role": "assistant",
                "status": "completed",
                "type": "message",
                "phase": None,
            }
        )
    return {
        "id": rid,
        "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "metadata": None,
        "model": model,
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": temperature,
        "tool_choice": tool_choice,
        "tools": tools or [],
        "top_p": top_p,
        "background": False,
        "max_output_tokens": max_output_tokens,
        "max_tool_calls": None,
        "previous_response_id": None,
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": status,
        "text": None,
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": 0,
                "input_tokens_per_turn": [],
                "cached_tokens_per_turn": [],
            },
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {
                "reasoning_tokens": 0,
                "tool_output_tokens": 0,
                "output_tokens_per_turn": [],
                "tool_output_tokens_per_turn": [],
            },
            "total_tokens": usage.total_tokens,
        },
        "user": None,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "input_messages": None,
        "output_messages": None,
    }
