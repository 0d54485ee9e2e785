"""A minimal OpenAI-compatible completions server for a local Hugging Face model.

For CPU machines and tests where vLLM / SGLang are unavailable; evaluation talks to it through
:class:`research.rollout.backends.openai_http.OpenAIGenerator` exactly as to vLLM. Generation
is the project's :class:`~research.rollout.backends.hf.HFGenerator`; requests are served one
at a time.

Endpoints:

* ``POST /v1/completions``: one prompt (a string or a list of token ids); ``max_tokens``,
  ``temperature`` (0 = greedy), ``top_p``, ``stop``, ``stop_token_ids``, ``seed``,
  ``logprobs`` (top-N), ``return_tokens_as_token_ids``, ``return_token_ids``,
  ``include_stop_str_in_output``, ``skip_special_tokens``, as vLLM reads them. Answers the
  completions shape: ``choices[0]`` with ``text``, ``finish_reason`` ("stop" / "length"),
  vLLM's ``stop_reason`` (the stop string; for EOS None when it is the tokenizer's, else the
  id), ``logprobs = {tokens, token_logprobs, top_logprobs, text_offset}``, optionally
  ``token_ids``; and ``usage``. ``n > 1``, ``echo`` and ``stream`` get a 400.
* ``POST /v1/chat/completions``: ``messages`` through the tokenizer's chat template (for an
  LLM judge or a quick check); ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``.
* ``GET /v1/models`` and ``GET /health``.

EOS, as vLLM: generation stops at the model's EOS set
(:func:`~research.rollout.generation.model_eos_ids`) and at the request's ``stop_token_ids``;
the EOS that stopped it is in ``token_ids`` and ``logprobs`` with its sampled log-prob, and in
``text`` only with ``include_stop_str_in_output`` (and ``skip_special_tokens`` false).

Log-probs are those of the sampling distribution (temperature and top-p applied), as the
Hugging Face backend records them. With ``logprobs >= 2`` the top-N alternatives come from one
teacher-forced forward pass over prompt + completion after generation; with ``logprobs`` 0 or
1, ``top_logprobs`` holds the sampled token only (vLLM adds the top-1 at 1).

Run: ``python -m research.rollout.server --model PATH --port 8001``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from research.rollout.generation import Generation, SamplingParams

logger = logging.getLogger(__name__)


class ChatRequest(BaseModel):
    """The subset of the chat completions request this server honours."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False


class CompletionRequest(BaseModel):
    """The subset of vLLM's ``CompletionRequest`` this server honours (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    logprobs: int | None = None
    echo: bool = False
    n: int = 1
    stream: bool = False
    seed: int | None = None
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True


class BadRequest(ValueError):
    """A request this server cannot answer; becomes a 400 with the message."""


def _error(status: int, message: str) -> JSONResponse:
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)


class _Engine:
    """The model, its tokenizer and the lock that serves one request at a time."""

    def __init__(self, model, tokenizer, name: str):
        from research.rollout.backends.hf import HFGenerator

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.generator = HFGenerator(model, tokenizer)
        self.lock = threading.Lock()

    def prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        elif all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise BadRequest("one prompt per request: a string or a list of token ids")
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if not ids or not all(0 <= t < vocab for t in ids):
            raise BadRequest(f"the prompt must be non-empty token ids in [0, {vocab})")
        return ids

    def complete(self, req: CompletionRequest) -> dict:
        if req.n != 1 or req.echo or req.stream:
            raise BadRequest("n > 1, echo and stream are not supported by this server")
        if req.logprobs is not None and req.logprobs < 0:
            raise BadRequest("logprobs must be >= 0")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        try:
            params = SamplingParams(req.max_tokens, req.temperature, req.top_p, stop, req.seed)
        except ValueError as e:
            raise BadRequest(f"invalid sampling parameters: {e}") from None
        ids = self.prompt_ids(req.prompt)
        generator = self.generator
        if req.stop_token_ids:  # on top of the model's EOS set, as vLLM
            from research.rollout.backends.hf import HFGenerator

            generator = HFGenerator(self.model, self.tokenizer, eos_token_ids=(
                generator.eos_token_ids | set(req.stop_token_ids)))
        with self.lock:
            g = generator.generate([ids], [params])[0]
            tops = (self.top_logprobs(ids, g, params, req.logprobs)
                    if req.logprobs and req.logprobs >= 2 else None)
        return self.response(req, ids, g, tops)

    def chat(self, req: ChatRequest) -> dict:
        """One chat turn: the messages through the tokenizer's chat template, then generation."""
        if req.n != 1 or req.stream:
            raise BadRequest("n > 1 and stream are not supported by this server")
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRequest("this model's tokenizer has no chat template: use /v1/completions")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        try:
            params = SamplingParams(req.max_tokens, req.temperature, req.top_p, stop, req.seed)
            ids = list(self.tokenizer.apply_chat_template(
                req.messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        except (ValueError, TypeError, KeyError) as e:
            raise BadRequest(f"invalid chat request: {e}") from None
        with self.lock:
            g = self.generator.generate([ids], [params])[0]
        text = self.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        if g.stop_string is not None and (at := text.find(g.stop_string)) >= 0:
            text = text[:at]
        n_new = len(g.token_ids)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if g.finish_reason == "length"
                             else "stop"}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": n_new,
                          "total_tokens": len(ids) + n_new}}

    def top_logprobs(self, prompt: list[int], g: Generation, p: SamplingParams, n: int):
        """Top-``n`` ``(ids, logprobs)`` per new token, by one teacher-forced forward pass."""
        import torch

        from research.rollout.sampling import sampling_logprobs

        device = next(self.model.parameters()).device
        ids = torch.tensor([prompt + g.token_ids], device=device)  # [1, P + T]
        with torch.inference_mode():
            logits = self.model(ids).logits[0, len(prompt) - 1 : -1]  # [T, V]
        values, indices = sampling_logprobs(logits, p.temperature, p.top_p).topk(n, dim=-1)
        return indices.cpu().tolist(), values.cpu().tolist()

    def token_str(self, token_id: int, as_id: bool) -> str:
        return f"token_id:{token_id}" if as_id else self.tokenizer.decode([token_id])

    def response(self, req: CompletionRequest, prompt: list[int], g: Generation, tops) -> dict:
        eos = g.token_ids[-1] if g.finish_reason == "eos" else None
        shown = g.token_ids[:-1] if eos is not None and not req.include_stop_str_in_output else (
            g.token_ids)
        text = self.tokenizer.decode(shown, skip_special_tokens=req.skip_special_tokens)
        if g.stop_string is not None and (at := text.find(g.stop_string)) >= 0:
            text = text[: at + len(g.stop_string) if req.include_stop_str_in_output else at]
        stop_reason = g.stop_string if eos in (None, self.tokenizer.eos_token_id) else eos
        choice = {"index": 0, "text": text,
                  "finish_reason": "length" if g.finish_reason == "length" else "stop",
                  "stop_reason": stop_reason, "logprobs": None}
        if req.logprobs is not None:
            choice["logprobs"] = self.logprobs(g, tops, req.return_tokens_as_token_ids)
        if req.return_token_ids:
            choice["token_ids"] = g.token_ids
        n_new = len(g.token_ids)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": n_new,
                          "total_tokens": len(prompt) + n_new}}

    def logprobs(self, g: Generation, tops, as_id: bool) -> dict:
        tokens = [self.token_str(t, as_id) for t in g.token_ids]
        top = []
        for j, (t, lp) in enumerate(zip(g.token_ids, g.logprobs, strict=True)):
            step = {self.token_str(t, as_id): lp}  # the sampled token first, as vLLM
            if tops is not None:
                for i, v in zip(tops[0][j], tops[1][j], strict=True):
                    step.setdefault(self.token_str(i, as_id), v)
            top.append(step)
        offsets, at = [], 0
        for tok in tokens:
            offsets.append(at)
            at += len(tok)
        return {"tokens": tokens, "token_logprobs": list(g.logprobs), "top_logprobs": top,
                "text_offset": offsets}


def _load(path: str | os.PathLike):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    return model, tokenizer


def create_model_app(model_path_or_model, tokenizer=None, *, model_name: str | None = None
                     ) -> FastAPI:
    """The app for a model folder (loaded in the app's lifespan) or a loaded model object
    (then ``tokenizer`` is required). ``model_name`` is what ``/v1/models`` reports."""
    is_path = isinstance(model_path_or_model, str | os.PathLike)
    if not is_path and tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer: create_model_app(model, tokenizer)")
    name = model_name or (os.fspath(model_path_or_model) if is_path else "local-model")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model, tok = (_load(model_path_or_model) if is_path
                      else (model_path_or_model, tokenizer))
        app.state.engine = _Engine(model, tok, name)
        logger.info("serving %s", name)
        yield

    app = FastAPI(title="ReSearch model server", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return _error(400, str(exc))

    @app.post("/v1/completions")
    def completions(req: CompletionRequest, request: Request):
        return request.app.state.engine.complete(req)

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest, request: Request):
        return request.app.state.engine.chat(req)

    @app.get("/v1/models")
    def models(request: Request):
        return {"object": "list", "data": [{"id": request.app.state.engine.name,
                                            "object": "model", "owned_by": "research"}]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--served-model-name", default=None, help="name in /v1/models")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback default)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    import uvicorn

    logging.basicConfig(level=args.log_level.upper())
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding to %s: the server is reachable from the network", args.host)
    app = create_model_app(args.model, model_name=args.served_model_name)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level=args.log_level))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
