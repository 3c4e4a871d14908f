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
from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.decoding import StopTextFilter, generation_kwargs
from sftkit.generation.engine import Answer, AnswerStream, BatchStream, Request, generate_answers
from sftkit.generation.loading import Models, load_models, resolve_adapter
from sftkit.generation.prompting import Prompt, build_prompt, context_length

__all__ = ["Answer", "AnswerStream", "BatchStream", "GenerateConfig", "GenerationError", "Models", "Prompt",
           "Request", "StopTextFilter", "build_prompt", "context_length", "generate_answers", "generation_kwargs",
           "load_models", "resolve_adapter"]
