"""The LLM-as-judge against a stub OpenAI-compatible chat server on loopback: known replies
give known verdicts, and the request carries what the judge must see (and the key only in
its header)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from research.evaluation.config import JudgeSection
from research.evaluation.judge import judge_records

REPLIES = {"Paris": "Yes.", "Lyon": "no", "Nice": "I think so, yes", "Brest": ""}


@pytest.fixture()
def chat_server():
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append({"path": self.path, "auth": self.headers.get("authorization"),
                         "body": body})
            prompt = body["messages"][0]["content"]
            prediction = prompt.split("Predicted answer: ")[1].split("\n")[0]
            reply = json.dumps({"choices": [{"message": {
                "role": "assistant", "content": REPLIES[prediction]}}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_known_replies_give_known_verdicts(chat_server, monkeypatch):
    url, seen = chat_server
    monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
    records = [{"question": "Capital of France?", "golden_answers": ["Paris", "Paree"],
                "prediction": p} for p in REPLIES]
    out = judge_records(records, JudgeSection(base_url=f"{url}/v1", model="judge-model",
                                              api_key_env="JUDGE_KEY"))
    assert [r["judge"] for r in out] == [1.0, 0.0, 0.0, 0.0]  # only a reply starting "yes"
    assert [r["judge_output"] for r in out] == list(REPLIES.values())
    assert all(s["path"] == "/v1/chat/completions" for s in seen)
    assert {s["auth"] for s in seen} == {"Bearer sk-test-123"}
    body = seen[0]["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    content = body["messages"][0]["content"]
    assert "Capital of France?" in content and "Paris; Paree" in content
    assert all("sk-test-123" not in json.dumps(s["body"]) for s in seen)  # header only
