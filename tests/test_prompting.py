"""Few-shot prompts (course_utils.prompting): the plain form for a model without a chat template, and the
conversation a chat template is given."""

from __future__ import annotations

from course_utils import data, prompting

SHOTS = [{"request": "Tea with Kenji in Lima on Saturday at 3 pm.",
          "record": {"for": "TEA", "with": "kenji", "on": "Sat", "at": "15:00", "in": "LIM"}},
         {"request": "Chess with Priya in Rome on Thursday at noon.",
          "record": {"for": "CHESS", "with": "priya", "on": "Thu", "at": "12:00", "in": "ROM"}}]
REQUEST = "Drinks with Omar in Tokyo on Monday at 6 pm."


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        self.messages = messages
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


def test_without_shots_the_plain_prompt_is_the_courses_own():
    assert prompting.few_shot_prompt(REQUEST, []) == data.make_prompt(REQUEST)


def test_plain_shots_come_solved_under_the_instruction_once():
    prompt = prompting.few_shot_prompt(REQUEST, SHOTS)
    assert prompt.count(data.INSTRUCTION) == 1 and prompt.startswith(data.INSTRUCTION)
    assert prompt.endswith(data.make_prompt(REQUEST).split("\n", 1)[1])  # the request last, "Record:" open
    for shot in SHOTS:
        assert f"Request: {shot['request']}\nRecord:{data.make_answer(shot['record'])}\n" in prompt
    assert prompt.index(SHOTS[0]["request"]) < prompt.index(SHOTS[1]["request"]) < prompt.index(REQUEST)


def test_a_chat_template_gets_a_conversation():
    tokenizer = ChatTokenizer()
    prompt = prompting.few_shot_prompt(REQUEST, SHOTS, tokenizer)
    roles = [m["role"] for m in tokenizer.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert tokenizer.messages[0]["content"] == data.INSTRUCTION
    assert tokenizer.messages[2]["content"] == data.format_record(SHOTS[0]["record"])
    assert tokenizer.messages[-1]["content"] == REQUEST and prompt.endswith("|assistant:")
