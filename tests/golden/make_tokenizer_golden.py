#!/usr/bin/python3
"""Golden token ids for the stories260K tokenizer, made with SentencePiece itself
(Debian's python3-sentencepiece, on ../shared/models/stories260K/tokenizer.model).
Writes tests/data/tokenizer_golden.json: [{"text": ..., "ids": [...]}] (ids without BOS).
The corpus covers Unicode (accents, CJK, emoji: byte fallback), digits, punctuation,
whitespace runs, tabs and newlines."""
import json
import os

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
model = os.path.join(HERE, "..", "..", "..", "shared", "models", "stories260K", "tokenizer.model")
sp = spm.SentencePieceProcessor(model_file=model)
corpus = [
    "Once upon a time, there was a little girl named Lily.",
    "Hello world",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "café naïve résumé façade",
    "日本語のテキスト",
    "emoji: 😀🎉 and ✓ marks",
    "tabs\tand\nnewlines\n\nhere",
    "multiple   spaces    inside",
    "  leading spaces",
    "trailing spaces  ",
    "\"Quotes\" and 'apostrophes' -- dashes — ellipsis…",
    "MiXeD CaSe WoRdS and ALLCAPS",
    "a",
    " ",
    "x" * 40,
    "In the beginning God created the heaven and the earth.",
    "Ω≈ç√∫˜µ≤≥÷ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]
out = [{"text": t, "ids": sp.encode(t)} for t in corpus]
path = os.path.join(HERE, "..", "data", "tokenizer_golden.json")
with open(path, "w") as f:
    json.dump({"made_with": f"sentencepiece {spm.__version__}, tokenizer.model of stories260K",
               "cases": out}, f, ensure_ascii=False, indent=1)
print(path)
