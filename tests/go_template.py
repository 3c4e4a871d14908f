"""A small renderer of Go's text/template, over the subset sftkit's Ollama templates use.

Enough to check a Modelfile's TEMPLATE without Go or Ollama: text and ``{{ }}`` actions with ``-``
trimming, comments, ``if``/``else if``/``else``/``end``, ``range`` (with ``$i, $m :=``), variables
declared with ``:=`` and assigned with ``=`` (scoped per block, as in Go), fields (``.Role``,
``$m.Content``, ``$.Messages``), string and integer literals, parentheses, and the builtins
``eq``, ``ne``, ``lt``, ``and``, ``or``, ``not``. Anything else raises, so a template using more
than this fails its test instead of passing unchecked.
"""
from __future__ import annotations

import json
import re

_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)|-?\d+|\$?[\w]*(?:\.\w+)+|\$\w*|\.|\w+)')


def _tokens(text: str) -> list[str]:
    out, at = [], 0
    text = text.strip()
    while at < len(text):
        match = _TOKEN.match(text, at)
        if not match or not match.group(1):
            raise ValueError(f"cannot read {text[at:]!r}")
        out.append(match.group(1))
        at = match.end()
    return out


def _parse(source: str) -> list:
    """Nodes: ('text', s), ('out', expr), ('set'/'assign', name, expr), ('if', [(expr, body)], else),
    ('range', names, expr, body)."""
    pieces, at = [], 0
    for match in _ACTION.finditer(source):
        text = source[at:match.start()]
        if match.group(1):
            text = text.rstrip()
        if pieces and pieces[-1][0] == "trim_next":
            pieces.pop()
            text = text.lstrip()
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        if match.group(3):
            pieces.append(("trim_next",))
        at = match.end()
    tail = source[at:]
    if pieces and pieces[-1][0] == "trim_next":
        pieces.pop()
        tail = tail.lstrip()
    pieces.append(("text", tail))
    nodes, rest = _block(pieces, 0, top=True)
    return nodes


def _block(pieces, i, top=False):
    nodes = []
    while i < len(pieces):
        kind, *value = pieces[i]
        i += 1
        if kind == "text":
            if value[0]:
                nodes.append(("text", value[0]))
            continue
        action = value[0]
        if action.startswith("/*"):
            continue
        word = action.split(None, 1)[0] if action else ""
        if word in ("end", "else"):
            if top:
                raise ValueError(f"unexpected {{{{ {action} }}}}")
            return nodes, i - 1
        if word == "if":
            branches, otherwise = [], []
            expr = _tokens(action[2:])
            while True:
                body, i = _block(pieces, i)
                branches.append((expr, body))
                closing = pieces[i][1]
                i += 1
                if closing == "end":
                    break
                if closing.startswith("else if"):
                    expr = _tokens(closing[7:])
                    continue
                otherwise, i = _block(pieces, i)
                if pieces[i][1] != "end":
                    raise ValueError("if without end")
                i += 1
                break
            nodes.append(("if", branches, otherwise))
        elif word == "range":
            head = action[5:]
            names = []
            if ":=" in head:
                left, head = head.split(":=", 1)
                names = [n.strip() for n in left.split(",")]
            body, i = _block(pieces, i)
            if pieces[i][1] != "end":
                raise ValueError("range without end")
            i += 1
            nodes.append(("range", names, _tokens(head), body))
        elif re.match(r"^\$\w+\s*:=", action):
            name, expr = action.split(":=", 1)
            nodes.append(("set", name.strip(), _tokens(expr)))
        elif re.match(r"^\$\w+\s*=", action):
            name, expr = action.split("=", 1)
            nodes.append(("assign", name.strip(), _tokens(expr)))
        else:
            nodes.append(("out", _tokens(action)))
    if not top:
        raise ValueError("block without end")
    return nodes, i


def _truth(value) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict)) and not value)


class _Scope:
    def __init__(self, root):
        self.root, self.frames = root, [{"$": root}]

    def lookup(self, name):
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise ValueError(f"undefined variable {name}")

    def assign(self, name, value):
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise ValueError(f"assignment to undeclared {name}")


_FUNCS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "not": lambda a: not _truth(a),
    "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
}


def _field(value, names):
    for name in names:
        value = value.get(name) if isinstance(value, dict) else None  # missingkey=zero, as Ollama sets
    return value


def _operand(tokens, at, dot, scope):
    tok = tokens[at]
    if tok == "(":
        value, at = _pipeline(tokens, at + 1, dot, scope)
        if tokens[at] != ")":
            raise ValueError("missing )")
        return value, at + 1
    if tok.startswith('"'):
        return json.loads(tok), at + 1
    if re.fullmatch(r"-?\d+", tok):
        return int(tok), at + 1
    if tok == ".":
        return dot, at + 1
    if tok.startswith("."):
        return _field(dot, tok[1:].split(".")), at + 1
    if tok.startswith("$"):
        name, *path = tok.split(".")
        return _field(scope.lookup(name), path), at + 1
    raise ValueError(f"unsupported operand {tok!r}")


def _pipeline(tokens, at, dot, scope):
    tok = tokens[at]
    if tok in _FUNCS:
        args, at = [], at + 1
        while at < len(tokens) and tokens[at] != ")":
            value, at = _operand(tokens, at, dot, scope)
            args.append(value)
        return _FUNCS[tok](*args), at
    if re.fullmatch(r"[A-Za-z_]\w*", tok):
        raise ValueError(f"unsupported function {tok!r}")
    return _operand(tokens, at, dot, scope)


def _eval(tokens, dot, scope):
    value, at = _pipeline(tokens, 0, dot, scope)
    if at != len(tokens):
        raise ValueError(f"unread tokens {tokens[at:]}")
    return value


def _run(nodes, dot, scope, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            value = _eval(node[1], dot, scope)
            out.append("" if value is None else str(value))
        elif kind == "set":
            scope.frames[-1][node[1]] = _eval(node[2], dot, scope)
        elif kind == "assign":
            scope.assign(node[1], _eval(node[2], dot, scope))
        elif kind == "if":
            for expr, body in node[1]:
                if _truth(_eval(expr, dot, scope)):
                    scope.frames.append({})
                    _run(body, dot, scope, out)
                    scope.frames.pop()
                    break
            else:
                scope.frames.append({})
                _run(node[2], dot, scope, out)
                scope.frames.pop()
        elif kind == "range":
            for index, item in enumerate(_eval(node[2], dot, scope) or []):
                frame = {}
                if len(node[1]) == 2:
                    frame[node[1][0]], frame[node[1][1]] = index, item
                elif len(node[1]) == 1:
                    frame[node[1][0]] = item
                scope.frames.append(frame)
                _run(node[3], item, scope, out)
                scope.frames.pop()


def render(source: str, data: dict) -> str:
    """``source`` executed on ``data`` as Go's text/template would."""
    out: list[str] = []
    _run(_parse(source), data, _Scope(data), out)
    return "".join(out)
