"""Generation: the engine (sftkit.generation.engine) and its front ends.

Front ends, each a module of its own that the engine never imports: ``ui`` (browser chat),
``terminal`` (terminal chat), ``api`` (OpenAI-compatible HTTP server), ``batch`` (batch/eval mode,
with ``report``). ``session`` is the chat history the UI and the terminal share.
generate.py picks one (sftkit.cli.generate_main).
"""
from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.engine import (Answer, AnswerStream, BatchStream, Models, Prompt, Request, StopTextFilter,
                                      build_prompt, context_length, generate_answers, generation_kwargs,
                                      load_for_generation, load_models, resolve_adapter)

__all__ = ["Answer", "AnswerStream", "BatchStream", "GenerateConfig", "GenerationError", "Models", "Prompt",
           "Request", "StopTextFilter", "build_prompt", "context_length", "generate_answers", "generation_kwargs",
           "load_for_generation", "load_models", "resolve_adapter"]
