"""A prompt type as the files every other tool reads: a Jinja chat template, stop strings, and
Ollama's Go template, each generated from the one table in :mod:`sftkit.prompts`.

Servers that chat through the tokenizer (transformers, vLLM, TGI, llama.cpp) render
``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``. The template written here
renders exactly :func:`sftkit.prompts.render_prompt` for those messages, and without the
generation prompt exactly the training text of :func:`sftkit.prompts.render_conversation`: the
same exchanges, separators, preambles and (for dated types) the ``strftime_now`` clock.

Messages use the chat roles ``system``, ``user``, ``assistant`` (with OpenAI ``tool_calls``, their
``arguments`` an object, as transformers passes them, or JSON text, written as given) and ``tool``,
plus two of sftkit's turns that chat formats have no name for: ``context`` (h2oGPT's raw text before
the prompt) and ``input`` (an exchange's extra input, alpaca's ``input`` column).
:func:`template_messages` converts turns. ``apply_chat_template(messages, tools=…)`` renders the tool
list, calls and results as :func:`sftkit.prompts.tools_as_text` writes them for the h2oGPT types.
"""
from __future__ import annotations

import json

from sftkit.errors import PromptError
from sftkit.prompts import (CALL_CLOSE, CALL_OPEN, RESPONSE_CLOSE, RESPONSE_OPEN, TOOLS_CLOSE, TOOLS_OPEN, PromptType,
                            Turn, add_tool_call, get_prompt_type)

CHAT_ROLES = {"system": "system", "context": "context", "human": "user", "input": "input", "bot": "assistant",
              "tool": "tool"}
STOP_FILE = "sftkit_prompt.json"  # prompt type and stop strings, read back by generate.py
# h2oGPT's clock lines; strftime_now is the clock transformers gives chat templates.
DATE_FORMAT, TIME_FORMAT = "%Y-%m-%d", "%H:%M:%S %p %Z"
NL = "\n"


def template_messages(turns: list[Turn]) -> list[dict]:
    """sftkit turns as chat messages for the generated templates (``human`` -> ``user``, a ``tool_call``
    one of the ``tool_calls`` of its assistant message, …)."""
    messages: list[dict] = []
    for role, text in turns:
        if role == "tool_call":
            add_tool_call(messages, text)
        else:
            messages.append({"role": CHAT_ROLES[role], "content": text})
    return messages


def _lit(text: str | None) -> str:
    """A Jinja string literal (Jinja reads backslash escapes as Python does)."""
    return json.dumps(text or "", ensure_ascii=False)


def _body(spec: PromptType) -> str:
    """Jinja setting ``ns.text`` to the exchange ``ex``'s instruction and input, joined as
    :func:`sftkit.prompts._opening` joins them for this type."""
    ins, inp = spec.instruction, spec.input
    if ins is not None and inp is not None:
        both = f"{_lit(ins)} + ex.ins + {_lit(inp)} + ex.inp"
    elif ins is not None or inp is not None:
        both = f"{_lit(ins if ins is not None else inp)} + ex.ins + '\\n' + ex.inp"
    else:
        both = "ex.ins + ': ' + ex.inp"
    newline = " + '\\n'" if spec.newline_after_prompt else ""
    return (f"{{%- if ex.ins and ex.inp -%}}{{%- set ns.text = ns.text + {both}{newline} -%}}\n"
            f"{{%- elif ex.ins -%}}{{%- set ns.text = ns.text + {_lit(ins)} + ex.ins{newline} -%}}\n"
            f"{{%- elif ex.inp -%}}{{%- set ns.text = ns.text + {_lit(inp)} + ex.inp{newline} -%}}\n"
            f"{{%- endif -%}}\n")


def jinja_template(prompt_type: str | int, bos_token: bool = False) -> str | None:
    """The Jinja chat template of ``prompt_type`` (None for ``chat``: the tokenizer's own stays).

    ``bos_token`` opens the text with the tokenizer's BOS, for tokenizers that add one when they
    encode sftkit's prompts (chat templates are encoded without special tokens).
    """
    spec = get_prompt_type(prompt_type)
    if spec.name == "chat":
        return None
    preamble = _lit(spec.preamble)
    if spec.preamble_with_input:
        preamble = f"({_lit(spec.preamble_with_input)} if ex.inp else {preamble})"
    history_response = spec.history_response if spec.history_response is not None else spec.response
    sep = _lit(spec.chat_sep)
    # The tool list, a call and a result as sftkit.prompts.tools_as_text writes them.
    tools = (f"{{%- set ns.lead = ns.lead + {_lit(TOOLS_OPEN + NL)} + ns.listing + {_lit(NL + TOOLS_CLOSE + NL)} -%}}"
             "{%- set ns.listed = true -%}")
    call_open, call_close = _lit(CALL_OPEN + NL + '{"name": '), _lit("}" + NL + CALL_CLOSE)
    response_open, response_close = _lit(RESPONSE_OPEN + NL), _lit(NL + RESPONSE_CLOSE)
    return (
        f"{{#- sftkit prompt_type {spec.name}: generated from sftkit.prompts.PROMPT_TYPES -#}}\n"
        "{%- set ns = namespace(lead='', ins='', inp='', exchanges=[], text='', listing='', listed=not tools, "
        "answer='') -%}\n"
        "{%- for t in tools or [] -%}{%- set ns.listing = ns.listing + ('' if loop.first else '\\n') + "
        "((t.function if t.function is defined else t) | tojson) -%}{%- endfor -%}\n"
        "{%- for m in messages -%}\n"
        "{%- if m.role != 'system' and not ns.listed -%}" + tools + "{%- endif -%}\n"
        "{%- if m.role == 'system' -%}{%- if m.content -%}{%- set ns.lead = ns.lead + m.content + '\\n' -%}"
        "{%- endif -%}\n"
        "{%- elif m.role == 'context' -%}{%- set ns.lead = ns.lead + m.content -%}\n"
        "{%- elif m.role == 'user' -%}{%- set ns.ins = ns.ins + '\\n' + m.content if ns.ins else m.content -%}\n"
        "{%- elif m.role == 'input' -%}{%- set ns.inp = ns.inp + '\\n' + m.content if ns.inp else m.content -%}\n"
        f"{{%- elif m.role == 'tool' -%}}{{%- set ns.text = {response_open} + m.content + {response_close} -%}}"
        "{%- set ns.ins = ns.ins + '\\n' + ns.text if ns.ins else ns.text -%}\n"
        "{%- elif m.role == 'assistant' -%}{%- set ns.answer = m.content or '' -%}"
        "{%- for call in m.tool_calls or [] -%}"
        f"{{%- set ns.text = {call_open} + (call.function.name | tojson) + "
        "', \"arguments\": ' + (call.function.arguments | tojson if call.function.arguments is mapping else "
        f"call.function.arguments) + {call_close} -%}}"
        "{%- set ns.answer = ns.answer + '\\n' + ns.text if ns.answer else ns.text -%}{%- endfor -%}"
        "{%- set ns.exchanges = ns.exchanges + [{'ins': ns.ins, 'inp': ns.inp, 'answer': ns.answer}] -%}"
        "{%- set ns.ins = '' -%}{%- set ns.inp = '' -%}\n"
        "{%- else -%}{{- raise_exception('sftkit prompt_type " + spec.name + ": unknown role ' + m.role) -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if not ns.listed -%}" + tools + "{%- endif -%}\n"
        "{%- if ns.ins or ns.inp -%}"
        "{%- set ns.exchanges = ns.exchanges + [{'ins': ns.ins, 'inp': ns.inp, 'answer': none}] -%}{%- endif -%}\n"
        "{%- set ns.text = ns.lead -%}\n"
        "{%- for ex in ns.exchanges -%}\n"
        + (f"{{%- if loop.last and not ns.text -%}}{{%- set ns.text = 'Current Date: ' + "
           f"strftime_now({_lit(DATE_FORMAT)}) + '\\nCurrent Time: ' + strftime_now({_lit(TIME_FORMAT)}) + "
           f"'\\n\\n' -%}}{{%- endif -%}}\n" if spec.dated else "")
        + (f"{{%- set ns.text = ns.text + {preamble} -%}}\n" if spec.preamble_in_history else
           f"{{%- if loop.last -%}}{{%- set ns.text = ns.text + {preamble} -%}}{{%- endif -%}}\n")
        + _body(spec)
        + f"{{%- if not loop.last -%}}{{%- set ns.text = ns.text + {_lit(history_response)} -%}}\n"
        f"{{%- elif ex.answer is not none or add_generation_prompt -%}}"
        f"{{%- set ns.text = ns.text + {_lit(spec.response)} -%}}{{%- endif -%}}\n"
        "{%- if ex.answer is not none -%}{%- set ns.text = ns.text + ex.answer -%}{%- endif -%}\n"
        f"{{%- if not loop.last and not ns.text.endswith({sep}) -%}}{{%- set ns.text = ns.text + {sep} -%}}"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        + ("{{- bos_token -}}" if bos_token else "")
        + "{{- ns.text -}}"
    )


def _go(text: str | None) -> str:
    """A Go template action printing ``text`` (a Go string literal: JSON's escapes are Go's); '' for none."""
    return "{{- " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def ollama_template(prompt_type: str | int) -> str:
    """``prompt_type`` in Ollama's template language (Go's text/template over ``.Messages``).

    Ollama hands a template system, user and assistant messages only (no ``context`` or ``input``
    turns), having merged consecutive messages of one role itself, and always asks for the answer's
    opening after the last user message. Its templates have no clock, so dated types are refused.
    One difference is left: sftkit writes no separator after a history answer that already ends
    with it, which Go templates cannot test.
    """
    spec = get_prompt_type(prompt_type)
    if spec.name == "chat":
        raise PromptError("prompt_type 'chat' keeps the base model's own template; sftkit writes none for Ollama")
    if spec.dated:
        raise PromptError(f"prompt_type {spec.name!r} opens prompts with the current date and time, and Ollama's "
                          f"templates have no clock; export another prompt type for Ollama (human_bot is the "
                          f"same without the date)")
    newline = _go("\n") if spec.newline_after_prompt else ""
    history_response = spec.history_response if spec.history_response is not None else spec.response

    def exchange(preamble: str | None, response: str | None) -> list[str]:
        return ([_go(preamble)] if preamble else []) + [
            "{{- if $m.Content }}", _go(spec.instruction), "{{- $m.Content }}", newline, "{{- end }}", _go(response)]

    lines = [
        f"{{{{- /* sftkit prompt_type {spec.name}: generated from sftkit.prompts.PROMPT_TYPES */ -}}}}",
        "{{- $lastUser := -1 }}",
        '{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lastUser = $i }}{{ end }}{{ end }}',
        '{{- range .Messages }}{{ if and (eq .Role "system") .Content }}{{ .Content }}' + _go("\n") + "{{ end }}{{ end }}",
        "{{- range $i, $m := .Messages }}",
        '{{- if eq $m.Role "user" }}',
        "{{- if lt $i $lastUser }}",
        *exchange(spec.preamble if spec.preamble_in_history else None, history_response),
        "{{- else }}",
        *exchange(spec.preamble, spec.response),
        "{{- end }}",
        '{{- else if eq $m.Role "assistant" }}',
        "{{- $m.Content }}",
        "{{- if lt $i $lastUser }}" + _go(spec.chat_sep) + "{{ end }}",
        "{{- end }}",
        "{{- end }}",
    ]
    return "\n".join(line for line in lines if line)
