"""Evaluation: ReSearch and the RAG baselines (direct, naive RAG, Iter-RetGen, FLARE, IRCoT) in
one registry (``methods``), the ReSearch pipeline used for validation during training
(``research_pipeline``), the runner with resumable run folders and the original's results table
(``runner``), its config (``config``), an optional LLM judge (``judge``), a FlashRAG pipeline
adapter (``flashrag_adapter``) and the ``research eval`` command (``commands``); scored with
FlashRAG's metrics."""
