"""Chat-template golden renderings, made with Jinja2 as transformers renders chat templates.

Run with Debian's python3-jinja2: /usr/bin/python3 tests/golden/make_chat_golden.py
Writes tests/data/chat_golden.json: for each template (modelled on the chat templates shipped
with Llama 2, ChatML models (Qwen, SmolLM), Zephyr/TinyLlama, Llama 3, Mistral, Gemma, Phi-3,
plus two that exercise whitespace control, filters and methods, and Qwen3's and DeepSeek-V3's
own, tests/data/chat/*.jinja) and each conversation, the
text of apply_chat_template(tokenize=False) with add_generation_prompt false and true, or the
error that raise_exception() gives. transformers' environment: ImmutableSandboxedEnvironment
(trim_blocks=True, lstrip_blocks=True) with raise_exception as a global.
"""
import json
import os

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "chat_golden.json")
BOS, EOS = "<s>", "</s>"

TEMPLATES = {
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}\n"
        "{% endfor %}"
    ),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
        " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    "whitespace": (
        "{#- a comment -#}\n"
        "{%- for m in messages %}\n"
        "    {%- if m.role == 'system' -%}\n"
        "        [SYS] {{ m.content | upper }}\n"
        "    {% else %}\n"
        "  {{ loop.index }}/{{ loop.length }} {{ m.role | capitalize }}: {{ m.content ~ '|' ~ (m.content | length) }}\n"
        "    {%- endif %}\n"
        "  {# an indented comment #}\n"
        "{% endfor -%}\n"
        "{{ \"done\" if add_generation_prompt else \"end\" }}{{ ' ' + messages[-1]['content'][:5] }}\n"
        "{% if messages | length > 2 and not add_generation_prompt %}long{% elif messages|length == 1 %}one{% else %}x{% endif %}"
    ),
    "methods": (
        "{% for m in messages %}{{ m['role'] | tojson }}{% if m.content.startswith('Q') %}"
        "{{ m.content.replace('Q', 'q') }}{% endif %}{{ m.content.split(' ') | join('_') }}"
        "{% if 'assist' in m.role %}!{% endif %}{% if m.get('name') is none %}-{% endif %}"
        "{{ m.content.lstrip().rstrip('?') | lower }}{{ loop.revindex }}"
        "{% if m.role == 'system' %}[{{ m.content | title }}|{{ m.content | capitalize }}|{{ m.content.title() }}|"
        "{{ m.content.upper() }}]{% endif %}{% endfor %}"
        "{{ messages | length }}{{ (messages | first).role }}{{ (messages | last)['role'] | title }}"
        "{{ bos_token is defined }}{{ undefined_var is defined }}{{ 7 // 2 }}{{ -7 % 3 }}{{ [1, 2] | length }}"
    ),
}

# Qwen3's own template (its tokenizer_config.json, Apache-2.0): namespace(), set ns.attr, [::-1],
# the thinking split, tool turns
# and DeepSeek-V3's (MIT): namespace flags over system prompts, tool outputs and thinking text
for name in ("qwen3", "deepseek_v3"):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "chat", name + ".jinja")) as f:
        TEMPLATES[name] = f.read()

CONVERSATIONS = {
    "system_two_turns": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Q: What does the cow say?"},
        {"role": "assistant", "content": " The cow says moo. "},
        {"role": "user", "content": "And the duck?"},
        {"role": "assistant", "content": "Quack."},
    ],
    "two_turns": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon a time..."},
    ],
    "one_user": [{"role": "user", "content": "  Unicode: café, 日本, 😀 and\nnewlines  "}],
    # the scripts whose case the templates' upper/lower/title/capitalize filters map
    "scripts": [
        {"role": "system", "content": "Ёлка Ѣѣ Ҙҙ Ӂӂ Ӏӏ Ԥԥ ҂҃ Բարեվ ՠ ｗｉｄｅ ＡＢＣ 𐐀𐐨 Ελλάδα"},
        {"role": "user", "content": "ӂук Ѣкс բԱՐԵՎ և ａＢｃ 𐐨𐐀 ѣ҃ѣ"},
    ],
    # every cased script as Python maps it: full mappings (ß, ŉ, ﬃ, İ, ΐ), titlecase digraphs,
    # Georgian, Cherokee, Glagolitic, Greek Extended with iota subscripts, the final sigma
    "all_scripts": [
        {"role": "system", "content": "straße ŉ ﬃx İstanbul ΐ ǆungla ǅ Ǆ ΟΔΟΣ ΟΔΟΣ. Σ ΑΣ-ΒΣ (ΣΑ) ᾳ ᾼ ὒ "
                                      "ᏣᎳᎩ ꭰꮳ ⰀⰰⰟ ⴀ ა Ა ǰ ẞ ℌ Ⓐⓐ 𞤀𞤢 Ꙁꙁ ɐ ʔ ꞵ ǈungla ǉ"},
        {"role": "user", "content": "ΑΣ'Σ ὈΔΥΣΣΕΎΣ ﬀ ǉudi İi ǅemal SOS Σ"},
    ],
    "thinking_and_tools": [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nIt is 4."},
        {"role": "user", "content": "<tool_response>ok</tool_response>"},
        {"role": "tool", "content": "{\"result\": 4}"},
        {"role": "tool", "content": "second"},
        {"role": "assistant", "content": "<think>sure</think>Done."},
    ],
    "not_alternating": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
}


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    cases = []
    for tname, text in TEMPLATES.items():
        tmpl = env.from_string(text)
        for cname, msgs in CONVERSATIONS.items():
            for agp in (False, True):
                case = {"template": tname, "conversation": cname, "add_generation_prompt": agp}
                try:
                    case["text"] = tmpl.render(messages=msgs, add_generation_prompt=agp, bos_token=BOS, eos_token=EOS)
                except TemplateError as e:
                    case["error"] = str(e)
                cases.append(case)
    with open(OUT, "w") as f:
        json.dump({"made_with": "jinja2 " + __import__("jinja2").__version__, "bos_token": BOS, "eos_token": EOS,
                   "templates": TEMPLATES, "conversations": CONVERSATIONS, "cases": cases}, f, indent=1,
                  ensure_ascii=False)
    print(f"{len(cases)} cases, {sum('error' in c for c in cases)} errors -> {OUT}")


if __name__ == "__main__":
    main()
