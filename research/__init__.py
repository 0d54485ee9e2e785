"""ReSearch: train language models with GRPO to reason with a search tool.

The package holds the logic that is ReSearch once: the prompt protocol, rewards, data rows,
the retrieval service and its client, the search-interleaved rollout and the adapters for the
training engines. Importing it needs none of the heavy optional dependencies.
"""

__version__ = "0.1.0"
