#!/usr/bin/python3
"""Write tests/data/instruct.jsonl: a small synthetic instruction task (prompt/completion)
for prompt-masked tuning of stories260K. The answers are fixed facts the base model does
not produce on its own; exact-match accuracy before/after training shows the tuning."""
import json
import os

pairs = [
    ("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"), ("bird", "tweet"),
    ("pig", "oink"), ("sheep", "baa"), ("frog", "ribbit"), ("lion", "roar"), ("owl", "hoot"),
    ("bee", "buzz"), ("horse", "neigh"),
]
colors = [
    ("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white"), ("apple", "red"),
    ("night", "black"), ("carrot", "orange"), ("grape", "purple"),
]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "instruct.jsonl")
with open(out, "w") as f:
    for a, s in pairs:
        f.write(json.dumps({"prompt": f"Q: What does the {a} say? A:", "completion": f" The {a} says {s}."}) + "\n")
    for t, c in colors:
        f.write(json.dumps({"prompt": f"Q: What color is the {t}? A:", "completion": f" The {t} is {c}."}) + "\n")
print(out)
