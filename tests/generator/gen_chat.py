#!/usr/bin/env python3
"""Generate the fixtures of crate `viper-chat-template` (tests/fixtures/chat/).

What it writes (deterministic: no randomness, no clock, fixed key order; rerunning it on the same
inputs gives byte-identical files):

* tests/fixtures/chat/<name>/{tokenizer.json, tokenizer_config.json, special_tokens_map.json}
  copied from the reference checkpoints (so the Rust tests need nothing outside the repo), for
  mamba-s1 and jamba-s1, plus jamba-s1-llama-nobos and jamba-s1-llama-eos: the jamba-s1 files
  with `tokenizer_class: LlamaTokenizer` and `add_bos_token` / `add_eos_token` false/false and
  true/true (transformers then rebuilds the post-processor from these flags, whatever
  tokenizer.json's says).
* tests/fixtures/chat/reference_cases.json: prompt, input_ids and image position of every case of the
  reference checkpoints' reference.json (produced by the upstream Viper code).
* tests/fixtures/chat/expected.json: for a set of conversations, the prompt rendered by transformers'
  `apply_chat_template` and the ids of the upstream `tokenizer_image_token` algorithm; plus
  encode/decode results and special-token ids of each tokenizer.

Pinned versions (those of the reference run): transformers==4.45.2 tokenizers==0.20.3, jinja2>=3.1.
Torch is not needed. Run from the repository root:

    python3 -m venv /tmp/pychat
    /tmp/pychat/bin/pip install transformers==4.45.2 tokenizers==0.20.3 jinja2
    /tmp/pychat/bin/python tests/generator/gen_chat.py --reference /path/to/shared/reference

The built-in templates rendered here are read from crates/viper-chat-template/templates/, and the
classic LLaVA ones are checked against a re-implementation of upstream `Conversation.get_prompt`.
"""

import argparse
import json
import re
import shutil
from pathlib import Path

import tokenizers
import transformers
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "chat"
BUILTINS = REPO / "viper-chat-template" / "templates"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# jamba-s1 with a Llama tokenizer class: transformers rebuilds the post-processor from these flags
LLAMA_VARIANTS = [("jamba-s1-llama-nobos", False, False), ("jamba-s1-llama-eos", True, True)]

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
VIPER_SYSTEM = "You are a helpful language and vision assistant. "
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
DEFAULT_SYSTEM = {
    "system_falcon_mamba": VIPER_SYSTEM,
    "system_jamba": VIPER_SYSTEM,
    "plain": "",
    "llava_v1": LLAVA_V1_SYSTEM,
    "chatml_direct": "Answer the questions.",
}


# ---------------------------------------------------------------------------------------------
# REFERENCE: upstream viper/mm_utils.py `tokenizer_image_token`, re-implemented from spec §5.4.
# ---------------------------------------------------------------------------------------------
def tokenizer_image_token(prompt, tokenizer):
    """Split on "<image>", encode every chunk with special tokens, keep one leading BOS and drop
    the first id of every chunk when chunk 0 starts with BOS, join with -200."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    positions = []
    for i, chunk in enumerate(chunks):
        if i > 0:
            # upstream: separator [-200] * (offset + 1), then sep[offset:] -> exactly one -200
            positions.append(len(ids))
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids, positions


# ---------------------------------------------------------------------------------------------
# REFERENCE: upstream viper/conversation.py `get_prompt` for the classic styles, re-implemented.
# `turns` are (role, text) with role "user"/"assistant"; a generation prompt is upstream's
# `append_message(roles[1], None)`.
# ---------------------------------------------------------------------------------------------
def upstream_get_prompt(name, system, turns, add_generation_prompt):
    if name == "llava_v1":  # SeparatorStyle.TWO
        roles, seps = {"user": "USER", "assistant": "ASSISTANT"}, [" ", "</s>"]
        msgs = [(roles[r], t) for r, t in turns] + ([("ASSISTANT", None)] if add_generation_prompt else [])
        ret = system + seps[0]
        for i, (role, msg) in enumerate(msgs):
            ret += role + ": " + msg + seps[i % 2] if msg else role + ":"
        return ret
    if name == "chatml_direct":  # SeparatorStyle.MPT, system holds its own header
        roles, sep = {"user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}, "<|im_end|>"
        msgs = [(roles[r], t) for r, t in turns] + ([(roles["assistant"], None)] if add_generation_prompt else [])
        ret = "<|im_start|>system\n" + system + sep
        for role, msg in msgs:
            ret += role + msg + sep if msg else role
        return ret
    if name == "plain":  # SeparatorStyle.PLAIN, sep2 None
        seps = ["\n", None]
        ret = system
        for i, (_, msg) in enumerate(turns):
            ret += msg + seps[i % 2]  # TypeError on odd i, as upstream
        return ret
    raise ValueError(name)


def copy_tokenizers(reference):
    for name in ["mamba-s1", "jamba-s1"]:
        (OUT / name).mkdir(parents=True, exist_ok=True)
        for f in TOKENIZER_FILES:
            shutil.copyfile(reference / name / f, OUT / name / f)
    for name, add_bos, add_eos in LLAMA_VARIANTS:
        variant = OUT / name
        variant.mkdir(parents=True, exist_ok=True)
        for f in ["tokenizer.json", "special_tokens_map.json"]:
            shutil.copyfile(reference / "jamba-s1" / f, variant / f)
        config = json.loads((reference / "jamba-s1" / "tokenizer_config.json").read_text())
        config.update(tokenizer_class="LlamaTokenizer", add_bos_token=add_bos, add_eos_token=add_eos)
        write_json(variant / "tokenizer_config.json", config)


def reference_cases(reference):
    out = {}
    for name in ["mamba-s1", "jamba-s1"]:
        ref = json.loads((reference / name / "reference.json").read_text())
        out[name] = [
            {
                "name": c["name"],
                "question": c["question"],
                "images": 1 if "image_token_position" in c else 0,
                "prompt": c["prompt"],
                "input_ids": c["input_ids"],
                "image_token_position": c.get("image_token_position"),
            }
            for c in ref["cases"]
        ]
    return out


def user(text, images=0, inline=False):
    return {"role": "user", "text": text, "images": images, "inline": inline}


def assistant(text):
    return {"role": "assistant", "text": text, "images": 0, "inline": False}


Q1 = "What colors are in this picture?"
ONE = [user(Q1, 1)]
TWO = [user("Compare these two pictures: Café ☃ or 日本?", 2)]
INLINE = [user("First <image> then <image>, which one is brighter?", 2, inline=True)]
MULTI = [user(Q1, 1), assistant("Red and blue."), user("Which shape is larger?")]
TEXT = [user("Tell me a short story about a red square.")]
FINAL = [user(Q1, 1), assistant("Red and blue.")]
MAMBA_BOS = "{{ bos_token }}" + "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
JAMBA_NOBOS = "{% for message in messages %}{{ '<|bom|><|' + message['role'] + '|> ' + message['content'] + '<|eom|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|bom|><|assistant|>' }}{% endif %}"


def case(name, tokenizer, template, turns, system=VIPER_SYSTEM, generation=True):
    return {"name": name, "tokenizer": tokenizer, "template": template, "system": system,
            "turns": turns, "add_generation_prompt": generation}


def builtin(name, tokenizer, template, turns, generation=True):
    return case(name, tokenizer, {"builtin": template}, turns, DEFAULT_SYSTEM[template], generation)


CHECKPOINT = {"checkpoint": True}
CASES = [
    case("mamba_one_image", "mamba-s1", CHECKPOINT, ONE),
    case("mamba_two_images", "mamba-s1", CHECKPOINT, TWO),
    case("mamba_inline_images", "mamba-s1", CHECKPOINT, INLINE),
    case("mamba_multi_turn", "mamba-s1", CHECKPOINT, MULTI),
    case("mamba_no_image", "mamba-s1", CHECKPOINT, TEXT),
    case("mamba_no_system", "mamba-s1", CHECKPOINT, ONE, system=None),
    case("mamba_final_assistant", "mamba-s1", CHECKPOINT, FINAL, generation=False),
    # template emits BOS, tokenizer adds none: offset 1 drops the first token after <image>
    case("mamba_template_bos", "mamba-s1", {"source": MAMBA_BOS}, ONE),
    case("jamba_one_image", "jamba-s1", CHECKPOINT, ONE),
    case("jamba_two_images", "jamba-s1", CHECKPOINT, TWO),
    case("jamba_inline_images", "jamba-s1", CHECKPOINT, INLINE),
    case("jamba_multi_turn", "jamba-s1", CHECKPOINT, MULTI),
    case("jamba_no_image", "jamba-s1", CHECKPOINT, TEXT),
    case("jamba_final_assistant", "jamba-s1", CHECKPOINT, FINAL, generation=False),
    # tokenizer adds BOS, template emits none: a single BOS, chunk 1's auto-BOS dropped
    case("jamba_template_nobos", "jamba-s1", {"source": JAMBA_NOBOS}, ONE),
    # Llama-class config with add_bos_token false, template emits BOS: first token after <image> lost
    case("jamba_llama_nobos_one_image", "jamba-s1-llama-nobos", CHECKPOINT, ONE),
    case("jamba_llama_nobos_no_image", "jamba-s1-llama-nobos", CHECKPOINT, TEXT),
    builtin("builtin_falcon_one_image", "mamba-s1", "system_falcon_mamba", ONE),
    builtin("builtin_falcon_multi_turn", "mamba-s1", "system_falcon_mamba", MULTI),
    builtin("builtin_jamba_one_image", "jamba-s1", "system_jamba", ONE),
    builtin("builtin_jamba_multi_turn", "jamba-s1", "system_jamba", MULTI),
    builtin("builtin_jamba_final_assistant", "jamba-s1", "system_jamba", FINAL, generation=False),
    builtin("builtin_llava_v1_one_image", "mamba-s1", "llava_v1", ONE),
    builtin("builtin_llava_v1_multi_turn", "jamba-s1", "llava_v1", MULTI),
    builtin("builtin_chatml_direct_one_image", "mamba-s1", "chatml_direct", ONE),
    builtin("builtin_chatml_direct_multi_turn", "mamba-s1", "chatml_direct", MULTI),
    # the prompt starts with <image>: chunk 0 is empty ([] for mamba, [BOS] for jamba)
    builtin("builtin_plain_mamba", "mamba-s1", "plain", ONE, generation=False),
    builtin("builtin_plain_jamba", "jamba-s1", "plain", ONE, generation=False),
]

TEXTS = [
    "Hello world",
    "Café ☃ naïve 日本語 🙂",
    "  two leading spaces\nand a\ttab",
    "<|im_start|>user\nhi<|im_end|><|bom|><|eom|>",
]
CLEAN_UP_TEXT = "Isn 't it , he said . Yes ! I 'm sure ?"


def messages_of(c):
    msgs = [] if c["system"] is None else [{"role": "system", "content": c["system"]}]
    for t in c["turns"]:
        prefix = "" if t["inline"] else (IMAGE_TOKEN + "\n") * t["images"]
        msgs.append({"role": t["role"], "content": prefix + t["text"]})
    return msgs


def render(c, tok):
    template = c["template"]
    if "builtin" in template:
        source = (BUILTINS / f"{template['builtin']}.jinja").read_text()
    elif "source" in template:
        source = template["source"]
    else:
        source = tok.chat_template
    msgs = messages_of(c)
    prompt = tok.apply_chat_template(
        msgs, chat_template=source, tokenize=False, add_generation_prompt=c["add_generation_prompt"]
    )
    name = template.get("builtin")
    if name in ("llava_v1", "chatml_direct", "plain"):
        turns = [(m["role"], m["content"]) for m in msgs if m["role"] != "system"]
        expected = upstream_get_prompt(name, c["system"], turns, c["add_generation_prompt"])
        assert prompt == expected, (c["name"], prompt, expected)
    return prompt


def tokenizer_info(tok):
    return {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "encode": [
            {"text": t, "add_special_tokens": s, "ids": tok(t, add_special_tokens=s).input_ids}
            for t in TEXTS
            for s in (True, False)
        ],
        "decode": [
            {"ids": ids, "skip_special_tokens": s, "text": tok.decode(ids, skip_special_tokens=s)}
            for ids in (tok(t).input_ids for t in TEXTS)
            for s in (True, False)
        ],
    }


def write_json(path, value):
    text = json.dumps(value, indent=1, ensure_ascii=False)
    # one line per list of ids keeps the files readable and diffable
    text = re.sub(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=Path("/work/shared/reference"),
                        help="directory holding mamba-s1/ and jamba-s1/")
    args = parser.parse_args()
    assert transformers.__version__ == "4.45.2", transformers.__version__
    assert tokenizers.__version__ == "0.20.3", tokenizers.__version__

    copy_tokenizers(args.reference)
    refs = reference_cases(args.reference)
    write_json(OUT / "reference_cases.json", refs)

    names = ["mamba-s1", "jamba-s1"] + [name for name, _, _ in LLAMA_VARIANTS]
    toks = {n: AutoTokenizer.from_pretrained(OUT / n) for n in names}

    # The fixture copies reproduce the reference prompts and ids.
    for name, cases in refs.items():
        for r in cases:
            c = case(r["name"], name, CHECKPOINT, [user(r["question"], r["images"])])
            prompt = render(c, toks[name])
            ids, positions = tokenizer_image_token(prompt, toks[name])
            assert (prompt, ids) == (r["prompt"], r["input_ids"]), r["name"]
            assert positions == ([r["image_token_position"]] if r["images"] else [])

    # The plain template cannot render a reply, upstream or here.
    try:
        upstream_get_prompt("plain", "", [("user", "a"), ("assistant", "b")], False)
        raise AssertionError("upstream plain should fail")
    except TypeError:
        pass

    cases = []
    for c in CASES:
        prompt = render(c, toks[c["tokenizer"]])
        ids, positions = tokenizer_image_token(prompt, toks[c["tokenizer"]])
        cases.append({**c, "prompt": prompt, "input_ids": ids, "image_positions": positions})
    by_name = {c["name"]: c for c in cases}
    # The built-in Viper templates agree with the reference checkpoints' templates.
    for a, b in [("builtin_falcon_one_image", "mamba_one_image"), ("builtin_falcon_multi_turn", "mamba_multi_turn"),
                 ("builtin_jamba_one_image", "jamba_one_image"), ("builtin_jamba_multi_turn", "jamba_multi_turn")]:
        assert by_name[a]["prompt"] == by_name[b]["prompt"], (a, b)

    write_json(OUT / "expected.json", {
        "generator": {
            "script": "tests/generator/gen_chat.py",
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "tokenizers": {n: tokenizer_info(t) for n, t in toks.items()},
        # decode of jamba-s1 with `clean_up_tokenization_spaces: true` in tokenizer_config.json
        "clean_up_tokenization_spaces": {
            "ids": (ids := toks["jamba-s1"](CLEAN_UP_TEXT).input_ids),
            "text": toks["jamba-s1"].decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True),
        },
        "cases": cases,
    })
    print(f"wrote {len(cases)} cases, {sum(map(len, refs.values()))} reference cases to {OUT}")


if __name__ == "__main__":
    main()
