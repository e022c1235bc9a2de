"""Talk to the running web app (`uvicorn main:api`) as a browser would: start a report and
follow its progress as server-sent events, then ask for a welcome mail and its answer."""

from __future__ import annotations

import json
import os

import httpx

URL = os.environ.get("API_URL", "http://127.0.0.1:8000")


def main() -> None:
    with httpx.Client(base_url=URL, timeout=60) as http:
        started = http.post("/reports", json={"rows": 20}).json()
        print("report queued:", started["job"])
        with http.stream("GET", started["events"], params={"every": 0.1}) as stream:
            event = ""
            for line in stream.iter_lines():  # what EventSource does in a browser
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    print(event, json.loads(line.removeprefix("data: ")))
        answer = http.post("/welcome", json={"email": "ada@example.com"}, params={"wait": 30})
        print("welcome:", answer.status_code, answer.json())


if __name__ == "__main__":
    main()
