"""Evaluation: the ReSearch pipeline and (to come) the RAG baselines, with FlashRAG's metrics."""
