"""Locust side of the client-cost comparison in BENCHMARKS.md.

Each user streams chat completions from the target (llm-sim on loopback)
back to back, reading every SSE line as it arrives and stamping the first
token, as an LLM load test in Locust does. FastHttpUser (geventhttpclient)
is Locust's cheapest client. Run with `--processes N` to use N cores.
"""

import time

from locust import FastHttpUser, task

BODY = {
    "model": "m",
    "stream": True,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": " ".join(["word"] * 32)}],
    "stream_options": {"include_usage": True},
}


class StreamingUser(FastHttpUser):
    # One connection per user, as barrage keeps one per in-flight request.
    concurrency = 1

    @task
    def stream(self):
        start = time.perf_counter()
        first = None
        chunks = 0
        with self.client.post(
            "/v1/chat/completions", json=BODY, stream=True, catch_response=True
        ) as resp:
            # geventhttpclient's read(n) waits for n bytes: read line by
            # line so each event is seen when it arrives.
            raw = resp._response
            while True:
                line = raw.readline(b"\n")
                if not line:
                    break
                if line.startswith(b"data:") and b'"content"' in line:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
            resp.success()
        self.environment.events.request.fire(
            request_type="TTFT",
            name="ttft",
            response_time=(first or 0) * 1000,
            response_length=chunks,
            exception=None,
            context={},
        )
