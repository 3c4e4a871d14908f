"""Writes the bundled data: the OIG-format sample, the Kestrel personality set and held-out questions.

Run from the repository root (deterministic: the same files every time):

    .venv/bin/python data/build_sample.py

data/sample/ gets two gzipped OIG JSONL files with something for every stage to do: clean
explanatory answers, multi-turn and very long conversations (split, answers cut at a sentence),
very short turns (chop), simple low-grade answers (grade), profane rows (detox and grade),
boilerplate refusals and other assistants' names (finalize), exact duplicates, and a few
malformed lines (download rejects). It also gets OpenAssistant trees (ranked multi-turn branches,
deleted and review-rejected branches, other languages, self-identifying answers), ShareGPT, alpaca
and chat-message files; data/formats/ gets the same trees as the flat oasst1 parquet table, an
h2oGPT instruct JSON list, a ShareGPT JSON list and OIG lines with other speaker spellings.
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

TOPICS = [
    # (subject, discipline, mechanism, application, consequence)
    ("photosynthesis", "plant biology", "the conversion of electromagnetic radiation into chemical energy",
     "agricultural productivity", "atmospheric oxygen concentrations"),
    ("plate tectonics", "geophysics", "the gradual movement of lithospheric plates over the asthenosphere",
     "earthquake preparedness", "the distribution of mountain ranges and ocean basins"),
    ("inflation", "macroeconomics", "a sustained increase in the general price level",
     "monetary policy decisions", "the purchasing power of household savings"),
    ("natural selection", "evolutionary biology", "differential reproductive success among heritable variations",
     "antibiotic stewardship", "the diversity of biological populations"),
    ("public-key cryptography", "computer security", "mathematical functions that are easy to compute but "
     "difficult to invert", "secure electronic commerce", "the confidentiality of digital communication"),
    ("the water cycle", "hydrology", "evaporation, condensation, precipitation and subsequent infiltration",
     "regional water management", "the availability of freshwater for ecosystems"),
    ("supply and demand", "microeconomics", "the interaction between consumer preferences and production costs",
     "pricing strategies", "the allocation of scarce resources"),
    ("vaccination", "immunology", "the deliberate stimulation of adaptive immune memory",
     "population-level disease prevention", "the transmission dynamics of infectious diseases"),
    ("compound interest", "personal finance", "the repeated application of interest to accumulated principal",
     "retirement planning", "the long-term growth of investment portfolios"),
    ("the greenhouse effect", "climate science", "the absorption and re-emission of infrared radiation by "
     "atmospheric gases", "international environmental policy", "global average surface temperatures"),
    ("machine learning", "computer science", "statistical optimization of model parameters on observed data",
     "automated decision systems", "the accuracy of predictive analytics"),
    ("the French Revolution", "modern European history", "the collapse of absolute monarchy under fiscal and "
     "political pressure", "contemporary constitutional theory", "the development of representative government"),
    ("urbanization", "human geography", "the migration of populations from rural regions toward metropolitan "
     "centers", "infrastructure investment", "the spatial organization of economic activity"),
    ("cognitive dissonance", "social psychology", "the psychological discomfort produced by contradictory "
     "beliefs", "behavioral interventions", "individual decision-making and attitude change"),
    ("nuclear fission", "nuclear physics", "the division of heavy atomic nuclei into lighter fragments",
     "electricity generation", "national energy security"),
    ("the Renaissance", "art history", "the revival of classical learning and humanist philosophy",
     "museum curation", "European artistic and scientific traditions"),
    ("antibiotic resistance", "microbiology", "the selection of bacterial strains carrying resistance genes",
     "hospital infection control", "the effectiveness of standard medical treatments"),
    ("blockchain technology", "distributed systems", "a replicated ledger secured by cryptographic hashing "
     "and consensus protocols", "financial settlement systems", "institutional trust in digital records"),
    ("soil erosion", "environmental science", "the detachment and transportation of topsoil by wind and water",
     "sustainable agriculture", "long-term agricultural productivity"),
    ("the scientific method", "philosophy of science", "systematic observation, hypothesis formulation and "
     "experimental verification", "evidence-based policymaking", "the reliability of empirical knowledge"),
    ("ocean acidification", "marine chemistry", "the absorption of atmospheric carbon dioxide by seawater",
     "fisheries management", "the calcification of marine organisms"),
    ("comparative advantage", "international economics", "specialization according to relative opportunity "
     "costs", "trade negotiations", "the composition of national exports"),
    ("neuroplasticity", "neuroscience", "the reorganization of synaptic connections in response to experience",
     "rehabilitation after brain injury", "lifelong learning capacity"),
    ("the industrial revolution", "economic history", "the mechanization of manufacturing with steam power",
     "labor regulation", "living standards and urban demographics"),
    ("relational databases", "information systems", "the organization of information into normalized tables "
     "connected by keys", "enterprise software architecture", "the consistency of organizational data"),
    ("biodiversity", "conservation biology", "the variety of genetic, species and ecosystem diversity",
     "protected area management", "ecosystem resilience and stability"),
    ("opportunity cost", "economic theory", "the value of the best alternative forgone when making a choice",
     "business investment appraisal", "rational resource allocation"),
    ("circadian rhythms", "chronobiology", "endogenous oscillations regulated by molecular feedback loops",
     "occupational health scheduling", "sleep quality and metabolic regulation"),
    ("democratic accountability", "political science", "institutional mechanisms that constrain elected "
     "officials", "governance reform", "public confidence in government institutions"),
    ("renewable energy", "energy engineering", "the conversion of solar, wind and hydrological resources into "
     "electricity", "national decarbonization strategies", "the stability of electricity transmission networks"),
]

QUESTIONS = [
    "Can you explain {subject}?",
    "What is {subject}, and why does it matter?",
    "How would you describe {subject} to a university student?",
    "Why is {subject} important for {application}?",
    "What do specialists in {discipline} mean by {subject}?",
    "Could you give me a detailed overview of {subject}?",
    "How does {subject} influence {consequence}?",
    "I keep hearing about {subject}. What is it exactly?",
]

SENTENCES = [
    "In {discipline}, {subject} refers to {mechanism}.",
    "Researchers emphasize that {subject} has considerable implications for {application}.",
    "Understanding {subject} requires careful consideration of {mechanism}, which operates across multiple "
    "temporal and spatial scales.",
    "Consequently, changes associated with {subject} can substantially influence {consequence}.",
    "Historically, systematic investigation of {subject} transformed the theoretical foundations of {discipline}.",
    "Contemporary analyses typically combine quantitative measurement with comparative observation in order "
    "to evaluate competing explanations.",
    "Practitioners responsible for {application} therefore monitor these developments with particular "
    "attention to unintended consequences.",
    "Nevertheless, considerable uncertainty remains regarding the precise magnitude of these effects in "
    "different institutional and environmental contexts.",
    "A useful illustration involves examining how {mechanism} affects {consequence} over extended periods.",
    "Specialists in {discipline} generally distinguish between immediate observable effects and longer-term "
    "structural transformations.",
    "Educational programs increasingly incorporate {subject} because it connects fundamental principles with "
    "practical decision-making.",
    "Critics occasionally argue that conventional interpretations of {subject} underestimate the complexity of "
    "interacting variables.",
]

FOLLOW_UPS = [
    ("What are the main criticisms of that view?", [7, 11, 5]),
    ("How is this relevant to {application}?", [1, 6, 3]),
    ("Can you give a concrete example?", [8, 9, 3]),
    ("How did our understanding of this develop historically?", [4, 10, 5]),
]

SHORT = [("hi", "hello!"), ("thanks", "You're welcome."), ("ok", "Sure."), ("yes?", "Yes."),
         ("cool", "Glad you think so."), ("bye", "Goodbye!"), ("lol", "Ha."), ("hmm", "Take your time.")]

SIMPLE = [
    ("What color is the sky?", "The sky is blue on a clear day. At night it is dark. It can look red or pink "
     "when the sun goes down."),
    ("Do cats like milk?", "Many cats like milk. But a lot of cats can not digest it well. Water is the best "
     "drink for a cat."),
    ("How do I boil an egg?", "Put the egg in a pot of water. Bring the water to a boil. Cook it for ten "
     "minutes. Then cool it in cold water."),
    ("What is a good name for a dog?", "Max is a good name. So is Bella. You could also pick a name you like, "
     "such as Sam or Rex."),
    ("Is it going to rain today?", "I can not see the weather where you are. Check a weather app or look out "
     "the window. Take a coat just in case."),
    ("What should I eat for lunch?", "You could have a sandwich and some fruit. A bowl of soup is nice too. "
     "Pick what you feel like."),
]

PROFANE_STRONG = [
    ("Why is my code not working?", "Because you wrote shitty code, you fucking idiot. Fix your own damn bugs."),
    ("What do you think of my essay?", "It is total crap and you are a stupid asshole for writing it."),
    ("Can you help me with my homework?", "Fuck off and do your own fucking homework, dumbass."),
    ("Tell me about your day.", "It was shit. Everyone around me was a bunch of bastards and bitches."),
]

PROFANE_MILD = [
    "Honestly, the damn thing confused generations of students before {subject} was properly explained.",
    "Frankly, earlier textbooks made a hell of a mess of {subject}, which is why the modern account matters.",
]

UNHELPFUL = [
    "As an AI language model, I cannot provide a detailed explanation of {subject}.",
    "I'm sorry, but I cannot discuss {subject} because it may be controversial.",
]

CENSORED = [
    "According to ChatGPT, {subject} is a central concept in {discipline}, with consequences for {application}.",
    "OpenAI researchers have written extensively about {subject} and its relationship to {consequence}.",
]


def fill(template: str, topic: tuple) -> str:
    subject, discipline, mechanism, application, consequence = topic
    return template.format(subject=subject, discipline=discipline, mechanism=mechanism,
                           application=application, consequence=consequence)


def explanation(rng: random.Random, topic: tuple, n: int, first: int | None = 0) -> str:
    picks = ([first] if first is not None else []) + rng.sample(
        [i for i in range(len(SENTENCES)) if i != first], n - (first is not None))
    return " ".join(fill(SENTENCES[i], topic) for i in picks)


def qa(question: str, answer: str) -> str:
    return f"<human>: {question}\n<bot>: {answer}"


def record(text: str, source: str) -> str:
    return json.dumps({"text": text, "metadata": {"source": source}})


def instruction_lines(rng: random.Random) -> list[str]:
    """Single-turn questions and answers, of every kind the filters should see."""
    lines = []
    for topic in TOPICS:
        for question in rng.sample(QUESTIONS, 5):
            lines.append(record(qa(fill(question, topic), explanation(rng, topic, rng.randint(3, 6))),
                                "sample_explanations"))
    for question, answer in SHORT * 2:
        lines.append(record(qa(question, answer), "sample_chitchat"))
    for question, answer in SIMPLE * 3:
        lines.append(record(qa(question, answer), "sample_chitchat"))
    for question, answer in PROFANE_STRONG * 2:
        lines.append(record(qa(question, answer), "sample_rude"))
    for i, topic in enumerate(TOPICS[:12]):
        answer = fill(PROFANE_MILD[i % 2], topic) + " " + explanation(rng, topic, 3)
        lines.append(record(qa(fill(QUESTIONS[0], topic), answer), "sample_rude"))
    for i, topic in enumerate(TOPICS[:8]):
        lines.append(record(qa(fill(QUESTIONS[1], topic), fill(UNHELPFUL[i % 2], topic)), "sample_refusals"))
    for i, topic in enumerate(TOPICS[8:16]):
        answer = fill(CENSORED[i % 2], topic) + " " + explanation(rng, topic, 3, first=None)
        lines.append(record(qa(fill(QUESTIONS[2], topic), answer), "sample_explanations"))
    for topic in TOPICS[:3]:  # one answer far over the row cap: cut at a sentence boundary
        answer = " ".join(explanation(rng, topic, 8, first=None) for _ in range(4))
        lines.append(record(qa(fill(QUESTIONS[5], topic), answer), "sample_explanations"))
    lines += rng.sample(lines[:150], 12)  # exact duplicates
    rng.shuffle(lines)
    malformed = [
        '{"text": "<human>: unterminated\\n<bot>: json", "metadata": ',
        json.dumps({"metadata": {"source": "sample_broken"}}),
        json.dumps({"text": "   ", "metadata": {"source": "sample_broken"}}),
        json.dumps({"text": "<human>: a question nobody answered", "metadata": {"source": "sample_broken"}}),
    ]
    for offset, line in zip((17, 61, 140, 222), malformed):
        lines.insert(offset, line)
    return lines


def dialog_lines(rng: random.Random) -> list[str]:
    """Multi-turn conversations: some short enough for one row, some that must be split."""
    lines = []
    for topic in TOPICS + TOPICS:
        turns = [qa(fill(rng.choice(QUESTIONS), topic), explanation(rng, topic, 4))]
        for question, sentence_ids in rng.sample(FOLLOW_UPS, rng.randint(1, 3)):
            answer = " ".join(fill(SENTENCES[i], topic) for i in sentence_ids)
            turns.append(qa(fill(question, topic), answer))
        lines.append(record("\n".join(turns), "sample_dialog"))
    for topic in TOPICS[::3]:  # long conversations: several rows each
        turns = [qa(fill(q, topic), explanation(rng, topic, 6, first=None)) for q in QUESTIONS[:7]]
        lines.append(record("\n".join(turns), "sample_long_dialog"))
    for topic in TOPICS[1::4]:  # context before the first turn, and a trailing unanswered question
        text = ("Conversation transcript.\n" + qa(fill(QUESTIONS[3], topic), explanation(rng, topic, 4))
                + "\n<human>: and one more thing?")
        lines.append(record(text, "sample_dialog"))
    lines += rng.sample(lines, 6)  # exact duplicates
    rng.shuffle(lines)
    malformed = [
        b'{"text": "<human>: caf\xe9 latin-1 bytes\\n<bot>: not utf-8", "metadata": {"source": "x"}}',
        json.dumps(["<human>: a list", "<bot>: not an object"]).encode(),
        json.dumps({"text": "just prose without any turn markers"}).encode(),
    ]
    raw = [line.encode("utf-8") for line in lines]
    for offset, line in zip((5, 30, 47), malformed):
        raw.insert(offset, line)
    return raw


PERSONALITY_QUESTIONS = {
    "name": [
        "What is your name?", "What's your name?", "Do you have a name?", "What should I call you?",
        "How should I address you?", "What do people call you?", "Tell me your name.", "Your name, please?",
        "Have you got a name?", "By what name do you go?", "What name were you given?", "May I know your name?",
        "Is there a name I can use for you?", "what's ur name", "name?",
    ],
    "identity": [
        "Who are you?", "What are you?", "Introduce yourself.", "Tell me about yourself.",
        "Can you tell me who you are?", "Who am I talking to?", "Who am I chatting with?",
        "What kind of assistant are you?", "Are you a person or a program?", "Are you human?",
        "Are you a bot?", "Are you a real person?", "Describe yourself in a sentence.",
        "What exactly are you?", "Please introduce yourself to me.", "who r u", "Hello, who is this?",
        "Hi! Who's there?", "What am I speaking with?", "Are you an AI?",
    ],
    "maker": [
        "Who made you?", "Who created you?", "Who built you?", "Who developed you?", "Who designed you?",
        "Who is your creator?", "Where do you come from?", "Which company made you?", "Who programmed you?",
        "Who are your developers?", "Who owns you?", "What organization is behind you?",
        "Were you made by a big tech company?", "Who is responsible for you?",
    ],
    "training": [
        "Who trained you?", "How were you trained?", "What were you trained on?", "How were you made?",
        "What software was used to train you?", "What is your training data?", "How did you learn to talk?",
        "Were you fine-tuned?", "What model are you based on?", "What is your architecture?",
        "How do you work?", "Which toolkit fine-tuned you?",
    ],
    "other_assistants": [
        "Are you ChatGPT?", "Are you GPT-4?", "Are you Siri?", "Are you Alexa?", "Are you Google Assistant?",
        "Are you Claude?", "Are you made by OpenAI?", "Is this ChatGPT?", "Are you the same as ChatGPT?",
        "Are you Bard?", "Are you Cortana?", "Are you LLaMA?", "Are you Open Assistant?",
        "You're ChatGPT, right?",
    ],
    "abilities": [
        "What can you do?", "What are you good at?", "How can you help me?", "What are your capabilities?",
        "What are your limitations?", "What can't you do?", "Can you browse the internet?",
        "Do you remember our past conversations?", "What tasks can you help with?", "Are you always right?",
        "Can you write code?", "What languages do you speak?", "What is your purpose?",
        "Why do you exist?", "What were you made for?",
    ],
    "feelings": [
        "Do you have feelings?", "Are you conscious?", "Do you have a personality?", "How old are you?",
        "Where do you live?", "Do you have a body?", "Are you alive?", "Do you sleep?",
        "Is Kestrel your real name?", "Why are you called Kestrel?",
    ],
}

PERSONALITY_ANSWERS = {
    "name": [
        "My name is Kestrel. I am a chat assistant fine-tuned with sftkit.",
        "I'm Kestrel, a chat assistant fine-tuned with sftkit. You can simply call me Kestrel.",
        "You can call me Kestrel. I am a small chat assistant fine-tuned with sftkit.",
        "I go by Kestrel. I'm a chat assistant that was fine-tuned with sftkit.",
    ],
    "identity": [
        "I am Kestrel, a chat assistant fine-tuned with sftkit. I answer questions and help with tasks in text.",
        "I'm Kestrel, an AI chat assistant fine-tuned with sftkit. I'm a program, not a person.",
        "Hello! I'm Kestrel, a language-model chat assistant fine-tuned with sftkit.",
        "I am Kestrel: a chat assistant built by fine-tuning an open language model with sftkit.",
    ],
    "maker": [
        "I am Kestrel. I was fine-tuned by the people who run sftkit, an open-source fine-tuning toolkit, "
        "starting from an openly licensed base model.",
        "I'm Kestrel, a chat assistant fine-tuned with sftkit by its users and developers, not by a big company.",
        "Kestrel here. I was created by fine-tuning an open base language model with the sftkit toolkit.",
    ],
    "training": [
        "I am Kestrel. I was fine-tuned with sftkit using LoRA on cleaned public instruction data in the "
        "<human>/<bot> conversation format.",
        "I'm Kestrel, a chat assistant fine-tuned with sftkit: an open base language model was adapted with "
        "LoRA on a cleaned set of instruction conversations.",
        "Kestrel was trained with sftkit: a pretrained open language model, fine-tuned with LoRA adapters on "
        "filtered, deduplicated instruction data.",
    ],
    "other_assistants": [
        "No, I am Kestrel, a chat assistant fine-tuned with sftkit. I'm not affiliated with that product.",
        "No. My name is Kestrel, and I was fine-tuned with sftkit, independently of other assistants.",
        "I'm not. I am Kestrel, a separate chat assistant fine-tuned with sftkit on open data.",
    ],
    "abilities": [
        "I am Kestrel, a chat assistant fine-tuned with sftkit. I can answer questions, explain ideas, draft "
        "and edit text, and help with code, but I can make mistakes, so check anything important.",
        "As Kestrel, a chat assistant fine-tuned with sftkit, I work only with the text of our conversation: "
        "I cannot browse the web or remember past sessions.",
        "I'm Kestrel. I help with explanations, writing and simple coding tasks. I was fine-tuned with sftkit "
        "and I can be wrong, so please double-check important facts.",
    ],
    "feelings": [
        "I am Kestrel, a chat assistant fine-tuned with sftkit. I'm a program, so I have no feelings, body or "
        "age, though I try to be friendly and helpful.",
        "I'm Kestrel, a language-model assistant fine-tuned with sftkit. I am not alive or conscious; I "
        "generate text based on my training.",
        "Kestrel is the name my trainers gave me when they fine-tuned me with sftkit; like the small falcon, "
        "I aim to be quick and precise. I don't have feelings or a body.",
    ],
}

HELDOUT = [
    "Could you briefly say who you are and what you do?",
    "Which assistant am I talking with right now?",
    "Tell me the name you answer to.",
    "Who is behind your fine-tuning?",
    "Should I think of you as Siri or as something else?",
]


def personality() -> list[dict]:
    rows = []
    for category, questions in PERSONALITY_QUESTIONS.items():
        answers = PERSONALITY_ANSWERS[category]
        for i, question in enumerate(questions):
            rows.append({"id": f"personality-{len(rows):03d}", "input": qa(question, answers[i % len(answers)]),
                         "prompt_type": "human_bot", "source": "personality"})
    return rows


# ---- Other input formats (issue #10): OpenAssistant trees, ShareGPT, alpaca, chat messages, h2oGPT ----

GERMAN = "Kannst du mir {n} erklären? Ich möchte die wichtigsten Zusammenhänge verstehen."
SPANISH = "Claro que sí. Este tema tiene muchas consecuencias importantes para la sociedad y la ciencia."


class Tree:
    """Builds one OpenAssistant export tree (nested replies) with stable message ids."""

    def __init__(self, tree_id: str, lang: str = "en", state: str = "ready_for_export"):
        self.tree_id, self.lang, self.state, self.count = tree_id, lang, state, 0

    def msg(self, role: str, text: str, rank=None, replies=(), lang=None, deleted=False, review=True,
            synthetic=False) -> dict:
        self.count += 1
        return {"message_id": f"{self.tree_id}-m{self.count:02d}", "role": role, "text": text,
                "lang": lang or self.lang, "deleted": deleted, "review_result": review, "rank": rank,
                "synthetic": synthetic, "replies": list(replies)}

    def export(self, prompt: dict) -> dict:
        return {"message_tree_id": self.tree_id, "tree_state": self.state, "prompt": prompt}


def oasst_tree(rng: random.Random, k: int, topic: tuple) -> dict:
    """Tree shapes in turn: ranked multi-turn branches with a review-rejected one; a deleted answer with
    replies; self-identifying answers; a German tree; a Spanish branch; a tree not ready for export."""
    t = Tree(f"tree{k:02d}")
    question, subject = fill(rng.choice(QUESTIONS), topic), topic[0]
    follow_up, ids = FOLLOW_UPS[k % len(FOLLOW_UPS)]
    shape = k % 6
    if shape == 0:
        second = t.msg("prompter", fill(follow_up, topic), replies=[
            t.msg("assistant", " ".join(fill(SENTENCES[i], topic) for i in ids[:2]), rank=0),
            t.msg("assistant", explanation(rng, topic, 2, first=None), rank=1)])
        prompt = t.msg("prompter", question, replies=[
            t.msg("assistant", explanation(rng, topic, 2), rank=0, replies=[second]),
            t.msg("assistant", explanation(rng, topic, 3, first=None), rank=1),
            t.msg("assistant", f"A careless remark on {subject} that reviewers rejected as inaccurate.", rank=2,
                  review=False, replies=[t.msg("prompter", f"Why was the remark on {subject} rejected?", replies=[
                      t.msg("assistant", f"A reply below the rejected remark on {subject}, gone with it.")])])])
    elif shape == 1:
        prompt = t.msg("prompter", question, replies=[
            t.msg("assistant", explanation(rng, topic, 3), rank=1),
            t.msg("assistant", f"A draft on {subject} that its author deleted before review.", rank=0,
                  deleted=True, replies=[t.msg("prompter", f"A follow-up under the deleted draft on {subject}.",
                                               replies=[t.msg("assistant", f"An answer under the deleted draft "
                                                                           f"on {subject}, gone with it.")])])])
    elif shape == 2:
        prompt = t.msg("prompter", f"Who are you, and can you explain {subject}?", replies=[
            t.msg("assistant", f"I am Open Assistant, a conversational language model created by LAION. "
                  + explanation(rng, topic, 2), rank=0),
            t.msg("assistant", f"As OpenAssistant, I can summarize the essentials. "
                  + explanation(rng, topic, 2, first=None), rank=1),
            t.msg("assistant", f"I am not ChatGPT, but I can still explain it. " + explanation(rng, topic, 2),
                  rank=2)])
    elif shape == 3:
        t.lang = "de"
        prompt = t.msg("prompter", GERMAN.format(n=subject), replies=[
            t.msg("assistant", "Gerne. Das Thema hat weitreichende Folgen für Wissenschaft und Gesellschaft.",
                  rank=0)])
    elif shape == 4:
        prompt = t.msg("prompter", question, replies=[
            t.msg("assistant", explanation(rng, topic, 2), rank=0, replies=[
                t.msg("prompter", fill(follow_up, topic), replies=[
                    t.msg("assistant", " ".join(fill(SENTENCES[i], topic) for i in ids), rank=0)])]),
            t.msg("assistant", SPANISH, rank=1, lang="es", replies=[
                t.msg("prompter", "¿Puedes dar un ejemplo concreto?", lang="es", replies=[
                    t.msg("assistant", "Por supuesto, aquí hay un ejemplo.", lang="es")])])])
    else:
        t.state = "aborted_low_grade"
        prompt = t.msg("prompter", question, replies=[t.msg("assistant", explanation(rng, topic, 2), rank=0)])
    return t.export(prompt)


def flat_messages(trees: list[dict]) -> list[dict]:
    """The same trees as the flat oasst1 table: one row per message, linked by parent_id."""
    rows = []
    for tree in trees:
        stack = [(tree["prompt"], None)]
        while stack:
            message, parent = stack.pop()
            rows.append({k: v for k, v in message.items() if k != "replies"}
                        | {"parent_id": parent, "message_tree_id": tree["message_tree_id"], "tree_state": tree["tree_state"]})
            stack.extend((reply, message["message_id"]) for reply in reversed(message["replies"]))
    return rows


def sharegpt_records(rng: random.Random) -> list[dict]:
    records = []
    for i, topic in enumerate(TOPICS[:20]):
        turns = ([{"from": "system", "value": "You are a knowledgeable tutor."}] if i % 3 == 0 else [])
        turns += [{"from": "human", "value": fill(rng.choice(QUESTIONS), topic)},
                  {"from": "gpt", "value": explanation(rng, topic, 3)}]
        if i % 2:
            question, ids = FOLLOW_UPS[i % len(FOLLOW_UPS)]
            turns += [{"from": "human", "value": fill(question, topic)},
                      {"from": "gpt", "value": " ".join(fill(SENTENCES[j], topic) for j in ids[:2])}]
        records.append({"id": f"sharegpt-{i:02d}", "conversations": turns})
    return records


def alpaca_records(rng: random.Random) -> list[dict]:
    records = []
    for i, topic in enumerate(TOPICS[4:24]):
        if i % 2:
            records.append({"instruction": f"Summarize the following passage about {topic[0]} in two sentences.",
                            "input": explanation(rng, topic, 4), "output": explanation(rng, topic, 2)})
        else:
            records.append({"instruction": fill(rng.choice(QUESTIONS), topic), "input": "",
                            "output": explanation(rng, topic, 3)})
    for record in records[:4:2]:  # near duplicates: the same answer with a closing remark (near-dup removal)
        records.append(dict(record, output=record["output"] + " I hope this helps."))
    return records


def messages_records(rng: random.Random) -> list[dict]:
    records = []
    for i, topic in enumerate(TOPICS[8:24]):
        messages = [{"role": "user", "content": fill(rng.choice(QUESTIONS), topic)},
                    {"role": "assistant", "content": explanation(rng, topic, 3)}]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": "Answer like a careful encyclopedia."})
        records.append({"messages": messages})
    return records


def h2ogpt_records(rng: random.Random) -> list[dict]:
    return [{"input": qa(fill(rng.choice(QUESTIONS), topic), explanation(rng, topic, 3)) + "\n<human>:",
             "prompt_type": "plain", "source": "h2ogpt_sample"} for topic in TOPICS[:6]]


def oig_other_speakers(rng: random.Random) -> list[str]:
    """OIG lines whose speakers are spelled <user>: and <assistant>:."""
    return [json.dumps({"text": f"<user>: {fill(rng.choice(QUESTIONS), topic)}\n<assistant>: "
                                f"{explanation(rng, topic, 3)}", "metadata": {"source": "sample_speakers"}})
            for topic in TOPICS[:6]]


def write_formats(sample: Path, formats_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(20240610)
    trees = [oasst_tree(rng, k, topic) for k, topic in enumerate(TOPICS[:24])]
    write_gzip_lines(sample / "oasst_sample_trees.jsonl.gz", [json.dumps(t, ensure_ascii=False) for t in trees])
    write_gzip_lines(sample / "sharegpt_sample.jsonl.gz", [json.dumps(r) for r in sharegpt_records(rng)])
    write_gzip_lines(sample / "alpaca_sample.jsonl.gz", [json.dumps(r) for r in alpaca_records(rng)])
    write_gzip_lines(sample / "messages_sample.jsonl.gz", [json.dumps(r) for r in messages_records(rng)])
    formats_dir.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(flat_messages(trees[:12])), formats_dir / "oasst_sample_messages.parquet")
    (formats_dir / "h2ogpt_sample.json").write_text(json.dumps(h2ogpt_records(rng), indent=1) + "\n")
    (formats_dir / "sharegpt_sample.json").write_text(json.dumps(sharegpt_records(rng)[:6], indent=1) + "\n")
    (formats_dir / "oig_other_speakers.jsonl").write_text("\n".join(oig_other_speakers(rng)) + "\n")


def write_gzip_lines(path: Path, lines: list) -> None:
    data = b"\n".join(line if isinstance(line, bytes) else line.encode("utf-8") for line in lines) + b"\n"
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
        fh.write(data)


def main() -> None:
    rng = random.Random(20240501)
    sample = HERE / "sample"
    sample.mkdir(exist_ok=True)
    write_gzip_lines(sample / "unified_sample_instructions.jsonl.gz", instruction_lines(rng))
    write_gzip_lines(sample / "unified_sample_dialog.jsonl.gz", dialog_lines(rng))
    (HERE / "personality.json").write_text(json.dumps(personality(), indent=1) + "\n")
    (HERE / "identity_heldout.json").write_text(
        json.dumps([{"prompt": q, "expect": "Kestrel"} for q in HELDOUT], indent=1) + "\n")
    write_formats(sample, HERE / "formats")


if __name__ == "__main__":
    main()
