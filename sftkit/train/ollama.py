"""An Ollama ``Modelfile`` for an exported GGUF: the prompt type's Go template, its stop strings
and the default system prompt, so ``ollama create NAME -f Modelfile`` chats as sftkit does."""
from __future__ import annotations

from sftkit.chat_template import ollama_template
from sftkit.errors import ExportError


def _quoted(text: str) -> str:
    """A Modelfile value: Ollama reads ``\"\"\"…\"\"\"`` raw (no escapes), newlines included."""
    if '"""' in text:
        raise ExportError(f"cannot write {text[:60]!r} into a Modelfile: it contains three double quotes")
    return f'"""{text}"""'


def modelfile(gguf_name: str, prompt_type: str, stops: list[str], system_prompt: str = "") -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, one PARAMETER stop per stop string, SYSTEM."""
    lines = [f"# Written by sftkit (finetune.py export --format=ollama); prompt_type {prompt_type}.",
             "# Create it with: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    if prompt_type == "chat":  # the base model's own template, which Ollama reads from the GGUF's metadata
        lines.append("# No TEMPLATE: Ollama derives it from the chat template in the GGUF.")
    else:
        lines.append(f"TEMPLATE {_quoted(ollama_template(prompt_type))}")
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops]
    if system_prompt:
        lines.append(f"SYSTEM {_quoted(system_prompt)}")
    return "\n".join(lines) + "\n"
