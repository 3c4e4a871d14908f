"""Generation: the engine and its front ends, one module per concern.

The engine: ``loading`` (a base model, its adapters and their names, built on sftkit.models),
``prompting`` (a chat rendered as training rendered it, cut to fit), ``decoding`` (stop strings,
stopping criteria, repetition penalty, generate's arguments) and ``engine`` (answers, streamed or
batched). Front ends, which the engine never imports: ``ui`` (browser chat), ``terminal``
(terminal chat), ``api`` (OpenAI-compatible HTTP server: ``protocol`` checks requests and writes
OpenAI's shapes, ``scheduler`` batches them on the one generating thread), ``batch`` (batch/eval
mode, with ``report``). ``session`` is the chat history the UI and the terminal share.
generate.py picks one (sftkit.cli.generate_main).
"""
import importlib

from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig

# The engine's names, loaded on first use: importing the package (generate.py --help reads
# sftkit.generation.config) must not load torch and transformers, 2 s.
_LAZY = {"StopTextFilter": "decoding", "generation_kwargs": "decoding", "Answer": "engine", "AnswerStream": "engine",
         "BatchStream": "engine", "Request": "engine", "generate_answers": "engine", "Models": "loading",
         "load_models": "loading", "resolve_adapter": "loading", "Prompt": "prompting", "build_prompt": "prompting",
         "context_length": "prompting"}

__all__ = ["GenerateConfig", "GenerationError", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
