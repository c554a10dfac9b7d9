"""No token reaches a notebook: a run with a fake Hugging Face token leaves no trace of it in the saved file."""

import hashlib
import secrets
import string

import nbformat
import pytest

from scripts.run_notebooks import execute, notebook_paths

# Proves that the kernel saw the token and that the course's own lookup finds it, printing only a digest of it.
SEES_THE_TOKEN = """import hashlib, os
from course_utils import runtime
found = runtime.find_token()
print("the kernel's token:", found == os.environ["HF_TOKEN"] == os.environ["HUGGING_FACE_HUB_TOKEN"],
      hashlib.sha256(found.encode()).hexdigest())"""


def fake_token() -> str:
    """Looks like a Hugging Face user token: hf_ and 34 random letters."""
    return "hf_" + "".join(secrets.choice(string.ascii_letters) for _ in range(34))


@pytest.mark.notebook
def test_a_token_in_the_environment_never_reaches_the_notebook_file(monkeypatch, tmp_path):
    token = fake_token()
    monkeypatch.setenv("HF_TOKEN", token)  # execute() hands os.environ to the kernel
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    source = notebook_paths(["01"])[0]
    nb = nbformat.read(source, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(SEES_THE_TOKEN))
    copy = tmp_path / source.name  # a copy: the committed notebook is never written
    nbformat.write(nb, copy)

    executed, _ = execute(copy)
    text = nbformat.writes(executed)
    check = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert check.split() == ["the", "kernel's", "token:", "True", hashlib.sha256(token.encode()).hexdigest()], check
    assert token not in text and token[:12] not in text, "the token, or its first 12 characters, is in the notebook"
