"""Writes the tool-calling and preference-pair samples in data/formats/ (content written for this project).

    python data/build_format_samples.py [OUT_DIR]

Each file follows its format's documented shape: OpenAI chat messages with ``tool_calls``, ``tool``
messages and a ``tools`` column (openai_tools.jsonl); ShareGPT with ``function_call``/``observation``
turns, a ``system`` and a ``tools`` column as JSON text, as glaive's function-calling sets and
LLaMA-Factory write it (sharegpt_tools.json); LLaMA-Factory's ShareGPT-style ranking rows
(sharegpt_ranking.json) and alpaca-style preference rows (alpaca_ranking.json); Anthropic hh-rlhf's
``chosen``/``rejected`` conversations as ``\\n\\nHuman: … \\n\\nAssistant: …`` text (hh_rlhf_pairs.jsonl).
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---- tools: the functions every tool sample calls
WEATHER = {"name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"]}}
CONVERT = {"name": "convert_currency", "description": "Convert an amount between two currencies",
           "parameters": {"type": "object", "properties": {"amount": {"type": "number"},
                                                           "from_code": {"type": "string"}, "to_code": {"type": "string"}},
                          "required": ["amount", "from_code", "to_code"]}}
TIMEZONE = {"name": "local_time", "description": "The local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}

# (question, [(function, arguments, result)], final answer); no call: a direct answer
CASES = [
    ("What's the weather like in Lisbon right now?", [("get_weather", {"city": "Lisbon"}, {"temp_c": 21, "sky": "sunny"})],
     "It is sunny in Lisbon, 21 °C."),
    ("Is it raining in Bergen? Give me Fahrenheit.", [("get_weather", {"city": "Bergen", "unit": "fahrenheit"},
                                                      {"temp_f": 48, "sky": "light rain"})],
     "Yes, there is light rain in Bergen, and it is 48 °F."),
    ("How much is 250 US dollars in euros?", [("convert_currency", {"amount": 250, "from_code": "USD", "to_code": "EUR"},
                                               {"amount": 231.5, "code": "EUR"})],
     "250 US dollars is about 231.50 euros."),
    ("What time is it in Tokyo and in Lima?", [("local_time", {"city": "Tokyo"}, {"time": "22:10"}),
                                               ("local_time", {"city": "Lima"}, {"time": "08:10"})],
     "It is 22:10 in Tokyo and 08:10 in Lima."),
    ("Convert 40 pounds sterling to Japanese yen.", [("convert_currency", {"amount": 40, "from_code": "GBP", "to_code": "JPY"},
                                                      {"amount": 7620, "code": "JPY"})],
     "40 pounds sterling is about 7,620 yen."),
    ("What is the capital of Portugal?", [], "The capital of Portugal is Lisbon."),
    ("Do I need a coat in Montreal today?", [("get_weather", {"city": "Montreal"}, {"temp_c": -6, "sky": "snow"})],
     "Yes: it is -6 °C and snowing in Montreal, so wear a warm coat."),
    ("Say hello in French.", [], "Bonjour !"),
]
TOOLS = [WEATHER, CONVERT, TIMEZONE]


def openai_rows():
    rows = []
    for n, (question, calls, answer) in enumerate(CASES):
        messages = [{"role": "system", "content": "You can call functions to answer."},
                    {"role": "user", "content": question}]
        if calls:
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{n}_{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}} for i, (name, args, _) in enumerate(calls)]})
            messages += [{"role": "tool", "tool_call_id": f"call_{n}_{i}", "content": json.dumps(result)}
                         for i, (_, _, result) in enumerate(calls)]
        messages.append({"role": "assistant", "content": answer})
        rows.append({"messages": messages, "tools": [{"type": "function", "function": t} for t in TOOLS]})
    return rows


def sharegpt_rows():
    rows = []
    for question, calls, answer in CASES[::-1]:
        turns = [{"from": "human", "value": question}]
        if len(calls) > 1:  # parallel calls: one turn holding the list, then their results as a list
            turns.append({"from": "function_call", "value": json.dumps([{"name": n, "arguments": a}
                                                                          for n, a, _ in calls])})
            turns.append({"from": "observation", "value": json.dumps([result for _, _, result in calls])})
        for name, args, result in calls if len(calls) == 1 else []:
            turns.append({"from": "function_call", "value": json.dumps({"name": name, "arguments": args})})
            turns.append({"from": "observation", "value": json.dumps(result)})
        turns.append({"from": "gpt", "value": answer})
        rows.append({"conversations": turns, "system": "Answer with the functions when they help.",
                     "tools": json.dumps(TOOLS)})
    return rows


# ---- preference pairs
PAIRS = [  # (history, question, better, worse)
    ([], "What is the boiling point of water at sea level?", "Water boils at 100 °C (212 °F) at sea level.",
     "Water boils at 50 °C."),
    ([], "Name a prime number between 10 and 20.", "13 is a prime number between 10 and 20.", "15."),
    ([("Hi!", "Hello! How can I help?")], "Can you recommend a book about the ocean?",
     "Try 'The Sea Around Us' by Rachel Carson: a classic, readable account of the ocean.", "Books are boring."),
    ([], "How many legs does a spider have?", "A spider has eight legs.", "Spiders have six legs like insects."),
    ([], "Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'.", "I don't do translations."),
    ([("I am planning a trip.", "Great! Where are you going?")], "To Kyoto. What should I see first?",
     "Start with Fushimi Inari shrine early in the morning, before the crowds, then walk through Gion.",
     "Just look it up."),
    ([], "What does a thermometer measure?", "A thermometer measures temperature.", "Pressure."),
    ([], "Give me a synonym for 'happy'.", "'Joyful' is a synonym for 'happy'.", "'Sad'."),
]


def ranking_rows():  # LLaMA-Factory's ShareGPT-style ranking rows
    rows = []
    for history, question, better, worse in PAIRS:
        turns = [t for human, bot in history for t in ({"from": "human", "value": human}, {"from": "gpt", "value": bot})]
        turns.append({"from": "human", "value": question})
        rows.append({"conversations": turns, "chosen": {"from": "gpt", "value": better},
                     "rejected": {"from": "gpt", "value": worse}})
    return rows


def hh_rows():  # Anthropic hh-rlhf: two whole conversations as text
    rows = []
    for history, question, better, worse in PAIRS:
        text = "".join(f"\n\nHuman: {human}\n\nAssistant: {bot}" for human, bot in history) + f"\n\nHuman: {question}"
        rows.append({"chosen": f"{text}\n\nAssistant: {better}", "rejected": f"{text}\n\nAssistant: {worse}"})
    return rows


def alpaca_ranking_rows():  # LLaMA-Factory's alpaca-style preference rows
    return [{"instruction": question, "input": "", "chosen": better, "rejected": worse}
            for history, question, better, worse in PAIRS if not history]


def files() -> dict[str, str]:
    """Every sample's file name and text."""
    def as_json(rows):
        return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"

    def as_jsonl(rows):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    return {"openai_tools.jsonl": as_jsonl(openai_rows()), "sharegpt_tools.json": as_json(sharegpt_rows()),
            "sharegpt_ranking.json": as_json(ranking_rows()), "hh_rlhf_pairs.jsonl": as_jsonl(hh_rows()),
            "alpaca_ranking.json": as_json(alpaca_ranking_rows())}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "formats"
    for name, text in files().items():
        (out / name).write_text(text, encoding="utf-8")
