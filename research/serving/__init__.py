"""The retrieval service: its config in ``config``, the FastAPI app factory in ``app``, the
retrievers it loads at start-up in ``loading``, the uvicorn entry of ``research serve`` in
``server``, and ``launch``, which starts it as a child process for a quickstart, training or
evaluation run. (The OpenAI-compatible model server is :mod:`research.rollout.server`.)"""
