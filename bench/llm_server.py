"""A local OpenAI-compatible chat server with a fixed latency, for `bench/llm_speed.py`.

It answers every ``POST .../chat/completions`` after `--latency` seconds with the same short
reply, keeping connections open (HTTP/1.1) as a real provider does, on one asyncio loop in a
process of its own: the client's process does not share its interpreter with the server, and a
thousand waiting requests cost the server no threads. It prints its base URL on a line of its
own once it listens and runs until it is killed. (`tests/fakes/servers.py` is for tests: it
scripts answers, records requests and closes every connection after one request.)

    .venv/bin/python bench/llm_server.py --latency 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json

REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(latency)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(REPLY), REPLY)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(latency: float, port: int) -> None:
    server = await asyncio.start_server(lambda r, w: _answer(r, w, latency), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{bound}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.latency, arguments.port))


if __name__ == "__main__":
    main()
