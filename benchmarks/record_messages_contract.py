"""What a real vLLM server answers on Anthropic's Messages routes, in tests/data/contract.json's format.

Run on the GPU machine against a vLLM started with `--enable-auto-tool-choice --tool-call-parser hermes`:

    python benchmarks/record_messages_contract.py --url http://127.0.0.1:8000 --model llama-8b --out FILE

Each case keeps the request, status, headers and body (streams: every raw chunk with its arrival time, as
contract.json does). The case `openapi_paths` lists every route the server publishes in /openapi.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx

TOOLS = [
    {
        "name": "search_segments",
        "description": "search video segments",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "city": {"type": "string"}},
            "required": ["query"],
        },
    }
]
USER = {"role": "user", "content": "Plan two days in Tainan."}


def cases(model: str) -> dict[str, dict[str, Any]]:
    base = {"model": model, "max_tokens": 8, "messages": [USER]}
    tool_turn = [
        USER,
        {"role": "assistant", "content": [
            {"type": "text", "text": "Searching."},
            {"type": "tool_use", "id": "toolu_01", "name": "search_segments", "input": {"query": "Tainan"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "Anping Fort; Chihkan Tower"},
        ]},
    ]  # fmt: skip
    post = "/v1/messages"
    return {
        "messages": {"path": post, "body": base},
        "messages_system_stop": {
            "path": post,
            "body": {
                **base,
                "system": "You are a travel assistant.",
                "stop_sequences": ["\n\n"],
                "temperature": 0.0,
                "top_p": 0.9,
                "metadata": {"user_id": "u1"},
            },
        },
        "messages_system_blocks": {
            "path": post,
            "body": {**base, "system": [{"type": "text", "text": "You are a travel assistant."}]},
        },
        "messages_stream": {"path": post, "body": {**base, "stream": True}},
        "messages_tools_auto": {
            "path": post,
            "body": {**base, "max_tokens": 24, "tools": TOOLS, "tool_choice": {"type": "auto"}},
        },
        "messages_tools_any_stream": {
            "path": post,
            "body": {
                **base,
                "max_tokens": 24,
                "tools": TOOLS,
                "tool_choice": {"type": "any"},
                "stream": True,
            },
        },
        "messages_tools_named": {
            "path": post,
            "body": {
                **base,
                "max_tokens": 24,
                "tools": TOOLS,
                "tool_choice": {"type": "tool", "name": "search_segments"},
            },
        },
        "messages_tool_result": {"path": post, "body": {**base, "tools": TOOLS, "messages": tool_turn}},
        "messages_image_block": {
            "path": post,
            "body": {
                **base,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:9/x.png"}},
                        ],
                    }
                ],
            },
        },
        "count_tokens": {
            "path": "/v1/messages/count_tokens",
            "body": {"model": model, "messages": [USER], "system": "You are a travel assistant."},
        },
        "count_tokens_tools": {
            "path": "/v1/messages/count_tokens",
            "body": {"model": model, "messages": [USER], "tools": TOOLS},
        },
        "err_unknown_model": {"path": post, "body": {**base, "model": "nope"}},
        "err_missing_max_tokens": {"path": post, "body": {"model": model, "messages": [USER]}},
        "err_bad_json": {"path": post, "body": '{"model": "x", "messages": ['},
        "err_bad_role": {"path": post, "body": {**base, "messages": [{"role": "tool", "content": "x"}]}},
        "err_too_long": {"path": post, "body": {**base, "max_tokens": 10_000_000}},
    }


def record(client: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "unused"}
    start = time.monotonic()
    with client.stream("POST", path, content=content, headers=headers) as r:
        streamed = r.headers.get("content-type", "").startswith("text/event-stream")
        chunks = []
        text = b""
        for piece in r.iter_raw():
            if streamed:
                chunks.append([round(time.monotonic() - start, 5), piece.decode()])
            else:
                text += piece
    return {
        "request": {"method": "POST", "path": path, "body": body},
        "status": r.status_code,
        "headers": dict(r.headers),
        "chunks": chunks if streamed else None,
        "body": None if streamed else text.decode(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="llama-8b")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out: dict[str, Any] = {}
    with httpx.Client(base_url=args.url, timeout=120) as client:
        spec = client.get("/openapi.json")
        paths = sorted(spec.json().get("paths", {})) if spec.status_code == 200 else []
        out["openapi_paths"] = {"request": {"method": "GET", "path": "/openapi.json", "body": None},
                                "status": spec.status_code, "paths": paths}  # fmt: skip
        for name, case in cases(args.model).items():
            out[name] = record(client, case["path"], case["body"])
            print(name, out[name]["status"], flush=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
