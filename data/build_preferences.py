"""Writes the bundled preference set (for finetune.py --stage=rm/dpo and `make demo-align`).

Run from the repository root (deterministic: the same files every time):

    .venv/bin/python data/build_preferences.py

data/preference_sample.json: {prompt, chosen, rejected} pairs written for this project. Each
chosen answer is a direct, polite, correct answer; each rejected answer to the same question is
one of three kinds a reward model should learn to rank lower: dismissive ("look it up
yourself"), evasive (talks around the question) or wrong. A few rows use the other accepted
shapes (messages-list prompt as in create_data.py's oasst_pairs.json, and hh-rlhf style whole
conversations) so the demo also reads them.

data/preference_heldout.json: questions that are in no pair, answered by the base, SFT and DPO
models in the demo and scored by the trained reward model.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (question, a good answer, a wrong answer)
QA = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("How many days are in a leap year?", "A leap year has 366 days, one more than a common year.",
     "A leap year has 360 days."),
    ("What gas do plants take in for photosynthesis?",
     "Plants take in carbon dioxide and, using sunlight, turn it into sugar and oxygen.",
     "Plants take in helium for photosynthesis."),
    ("What is the boiling point of water at sea level?",
     "At sea level water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.",
     "Water boils at 50 degrees Celsius at sea level."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare.",
     "Romeo and Juliet was written by Charles Dickens."),
    ("How many continents are there?",
     "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America.",
     "There are three continents."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system.",
     "Mercury is the largest planet in our solar system."),
    ("What is 12 multiplied by 12?", "12 multiplied by 12 is 144.", "12 multiplied by 12 is 124."),
    ("Why is the sky blue?",
     "Sunlight is scattered by the molecules in the air, and blue light is scattered much more than red "
     "light, so the sky looks blue.", "The sky is blue because it reflects the oceans."),
    ("How do I convert Celsius to Fahrenheit?",
     "Multiply the temperature in Celsius by 9/5 and add 32. For example, 20 degrees Celsius is 68 degrees "
     "Fahrenheit.", "Add 10 to the temperature in Celsius."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au, from the Latin word aurum.",
     "The chemical symbol for gold is Go."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius, or 32 degrees Fahrenheit.",
     "Water freezes at 10 degrees Celsius."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest and deepest ocean on Earth.",
     "The Indian Ocean is the largest ocean."),
    ("What is the square root of 81?", "The square root of 81 is 9.", "The square root of 81 is 8."),
    ("How can I improve my sleep?",
     "Keep a regular schedule, avoid caffeine late in the day, keep your bedroom dark and cool, and put "
     "screens away an hour before bed.", "Drink a strong coffee right before bed."),
    ("What does a thermometer measure?", "A thermometer measures temperature.",
     "A thermometer measures wind speed."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour.", "There are 100 minutes in an hour."),
    ("What is the main language spoken in Brazil?", "The main language spoken in Brazil is Portuguese.",
     "The main language spoken in Brazil is Spanish."),
    ("How do I make a cup of tea?",
     "Boil water, pour it over a tea bag or loose tea in a cup, let it steep for three to five minutes, then "
     "remove the tea and add milk or sugar if you like.", "Put the tea bag in cold water and drink it at once."),
    ("What is the tallest mountain on Earth?",
     "Mount Everest, at about 8,849 metres above sea level, is the tallest mountain on Earth.",
     "Mont Blanc is the tallest mountain on Earth."),
    ("What is the opposite of hot?", "The opposite of hot is cold.", "The opposite of hot is loud."),
    ("How many sides does a hexagon have?", "A hexagon has six sides.", "A hexagon has eight sides."),
    ("What do bees make?", "Bees make honey and beeswax.", "Bees make milk."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet because of its reddish dust.",
     "Venus is known as the Red Planet."),
    ("What is the currency of Japan?", "The currency of Japan is the yen.", "The currency of Japan is the euro."),
    ("How should I store fresh bread?",
     "Keep it in a bread box or paper bag at room temperature for a few days, or freeze slices for longer.",
     "Keep bread in a wet towel in the sun."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second in a vacuum.",
     "Light travels at about 300 kilometres per hour."),
    ("How many players are on a football team on the field?",
     "A football (soccer) team has eleven players on the field, including the goalkeeper.",
     "A football team has five players on the field."),
    ("What is H2O?", "H2O is the chemical formula for water: two hydrogen atoms and one oxygen atom.",
     "H2O is the chemical formula for salt."),
    ("Can you give me a tip for learning a new language?",
     "Practise a little every day: short daily sessions of listening and speaking help more than one long "
     "session a week.", "Only read the grammar book once and never speak it."),
    ("What is the smallest prime number?", "The smallest prime number is 2.", "The smallest prime number is 1."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci.",
     "The Mona Lisa was painted by Vincent van Gogh."),
    ("How many hours are in a day?", "There are 24 hours in a day.", "There are 12 hours in a day."),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "The capital of Italy is Madrid."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea, such as teacher, city or "
     "happiness.", "A noun is a word that describes how something is done."),
]

DISMISSIVE = ["Look it up yourself.", "I can't be bothered to answer that.", "Why would you even ask me that?",
              "Figure it out on your own.", "That is not my problem."]
EVASIVE = ["That is an interesting question, and many people wonder about things like that every day.",
           "There are many ways to think about this, and it depends on a lot of things.",
           "Well, questions like this have been asked for a long time."]

HELDOUT = [
    "What is the capital of Spain?",
    "How many days are in a week?",
    "What do cows drink?",
    "How can I stay focused while studying?",
    "Which planet is closest to the Sun?",
    "What is the chemical symbol for iron?",
]


def pairs() -> list[dict]:
    rows = []
    for i, (question, good, wrong) in enumerate(QA):
        rejected = (wrong, DISMISSIVE[i % len(DISMISSIVE)], EVASIVE[i % len(EVASIVE)])[i % 3]
        if i % 9 == 4:  # messages-list prompt, as create_data.py's oasst_pairs.json writes
            rows.append({"prompt": [{"role": "user", "content": question}], "chosen": good, "rejected": rejected,
                         "source": "sftkit-preferences"})
        elif i % 9 == 7:  # hh-rlhf style: two whole conversations differing in the last answer
            rows.append({"chosen": f"<human>: {question}\n<bot>: {good}",
                         "rejected": f"<human>: {question}\n<bot>: {rejected}", "source": "sftkit-preferences"})
        else:
            rows.append({"prompt": question, "chosen": good, "rejected": rejected, "source": "sftkit-preferences"})
        # A second pair per question with another kind of bad answer: more signal per question.
        other = (DISMISSIVE[(i + 2) % len(DISMISSIVE)], EVASIVE[(i + 1) % len(EVASIVE)], wrong)[i % 3]
        rows.append({"prompt": question, "chosen": good, "rejected": other, "source": "sftkit-preferences"})
    return rows


def main() -> None:
    (HERE / "preference_sample.json").write_text(json.dumps(pairs(), indent=1, ensure_ascii=False) + "\n")
    (HERE / "preference_heldout.json").write_text(json.dumps(HELDOUT, indent=1) + "\n")
    print(f"wrote {len(pairs())} pairs and {len(HELDOUT)} held-out prompts")


if __name__ == "__main__":
    main()
