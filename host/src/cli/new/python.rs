//! The Python templates: `app.py`, its native test, `tessera.toml`, a README.

use std::path::PathBuf;

use super::{Kind, Lang, adapter, agent_manifest, router_manifest};

/// The files of a new `kind` Python plugin called `name`, by path.
pub fn files(kind: Kind, name: &str) -> Vec<(PathBuf, String)> {
    let (manifest, app, test, run) = match kind {
        Kind::Agent => (
            agent_manifest(name, Lang::Python),
            AGENT_APP.to_string(),
            AGENT_TEST,
            "tessera run . --prompt \"reverse: hello\"     # run it in the sandbox".to_string(),
        ),
        Kind::Router => (
            router_manifest(name, Lang::Python),
            ROUTER_APP.to_string(),
            ROUTER_TEST,
            format!("tessera serve . EXPERT_BUNDLES... --router {name}"),
        ),
        Kind::Adapter => (
            adapter::manifest(name, Lang::Python),
            adapter_app(name),
            ADAPTER_TEST,
            String::new(),
        ),
    };
    let readme = match kind {
        Kind::Adapter => adapter::readme(name, "python3 -m unittest", "app.py"),
        _ => format!(
            r#"# {name}

A Tessera {world} in Python, made with `tessera new --lang python`. Three
commands:

```sh
python3 -m unittest                          # the native unit test
tessera build .                              # CPython + app.py → one component (~10 s)
{run}
```

`app.py` is the handler, `tessera.toml` what it is, what it may do
(capabilities) and its limits. `tessera build` compiles it with
componentize-py {version} (`python3 -m pip install componentize-py=={version}`
if it is not installed) and puts the Python SDK (`tessera_sdk`) on its path;
the SDK is also in `{sdk_dir}/` for the native test. See the plugin guide
(`docs/plugin-guide.md` in the Tessera repository).
"#,
            world = kind.world(),
            version = tessera_host::build::COMPONENTIZE_PY_VERSION,
            sdk_dir = tessera_host::build::PYTHON_SDK_DIR,
        ),
    };
    let mut files = vec![
        (PathBuf::from("tessera.toml"), manifest),
        (PathBuf::from("app.py"), app),
        (PathBuf::from("test_app.py"), test.to_string()),
        (PathBuf::from("README.md"), readme),
        (
            PathBuf::from(".gitignore"),
            "/target\n__pycache__/\n".to_string(),
        ),
    ];
    if kind == Kind::Adapter {
        files.extend(adapter::training_files());
    }
    files
}

/// An adapter's hooks in Python.
fn adapter_app(name: &str) -> String {
    let targets = adapter::TARGETS.map(|t| format!("{t:?}")).join(", ");
    format!(
        r#""""The adapter's hooks: they run sandboxed around every generation with
the LoRA weights that `train.sh` trains on `data/train.jsonl`."""

from tessera_sdk import Adapter, AdapterInfo, Message, Request, Response, Role, export_adapter

# The system prompt every training chat starts with.
SYSTEM_PROMPT = {prompt:?}


def as_trained(req: Request) -> Request:
    """`req` as the adapter was trained to see it: the training system
    prompt first (the caller's system messages dropped), greedy unless the
    caller chose a temperature."""
    messages = [Message.system(SYSTEM_PROMPT)] + [m for m in req.messages if m.role is not Role.SYSTEM]
    sampling = req.sampling
    if sampling.temperature is None:
        sampling = sampling.replace(temperature=0.0)
    return Request(messages, sampling, list(req.metadata))


class Plugin(Adapter):
    def describe(self) -> AdapterInfo:
        # The LoRA settings `train.sh` trains with: keep the two in step.
        return AdapterInfo({name:?}, {base:?}, {rank}, {alpha:.1}, [{targets}])

    def pre_request(self, req: Request) -> Request:
        req.require_user_message()
        return as_trained(req)

    def post_response(self, resp: Response) -> Response:
        resp.content = resp.content.strip()
        return resp.with_metadata("adapter", {name:?})


WitWorld = export_adapter(Plugin)
"#,
        prompt = adapter::SYSTEM_PROMPT,
        base = adapter::BASE_MODEL,
        rank = adapter::RANK,
        alpha = adapter::ALPHA,
    )
}

const ADAPTER_TEST: &str = r#""""The native unit test: `python3 -m unittest`."""

import json
import sys
import unittest
from pathlib import Path

# The SDK, where `tessera new` and `tessera build` put it.
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here / "target" / "tessera" / "python"))

import app  # noqa: E402
from tessera_sdk import Message, Request, Role  # noqa: E402


class Hooks(unittest.TestCase):
    def test_the_training_prompt_comes_first_and_decoding_is_greedy(self):
        req = Request([Message.system("Answer in French."), Message.user("When is Moss & Mill open?")])
        out = app.as_trained(req)
        self.assertEqual([m.role for m in out.messages], [Role.SYSTEM, Role.USER])
        self.assertEqual(out.messages[0].content, app.SYSTEM_PROMPT)
        self.assertEqual(out.sampling.temperature, 0.0)
        # A caller's temperature stands.
        warm = Request(req.messages, req.sampling.replace(temperature=0.9))
        self.assertEqual(app.as_trained(warm).sampling.temperature, 0.9)

    def test_every_training_chat_starts_with_the_prompt_the_hook_puts_first(self):
        for line in (here / "data" / "train.jsonl").read_text().splitlines():
            self.assertEqual(json.loads(line)["messages"][0]["content"], app.SYSTEM_PROMPT)


if __name__ == "__main__":
    unittest.main()
"#;

const AGENT_APP: &str = r#""""An expert: reverses a text exactly (`reverse: TEXT`); the host's model
answers the rest.

What it says about itself (name, description, tags, examples) is
tessera.toml: `tessera build` hands the manifest to the SDK.
"""

from tessera_sdk import Expert, Message, Request, Response, export_expert, model


def reversal(question):
    """`reverse: TEXT` reversed, or None for any other question."""
    verb, colon, text = question.partition(":")
    if not colon or verb.strip().lower() != "reverse":
        return None
    return text.strip()[::-1]


class Plugin(Expert):
    def handle(self, req: Request) -> Response:
        question = req.require_user_message()
        # The exact branch: computed here, the same every time.
        text = reversal(question)
        if text is not None:
            return Response(text).with_confidence(1.0).with_metadata("branch", "exact")
        # The model branch.
        answer = model.chat(
            [Message.system("Answer in one or two sentences."), Message.user(question)],
            req.sampling.replace(max_tokens=96),
        )
        return Response(answer.text).with_usage(answer.usage).with_metadata("branch", "model")


WitWorld = export_expert(Plugin)
"#;

const AGENT_TEST: &str = r#""""The native unit test: `python3 -m unittest`."""

import sys
import unittest
from pathlib import Path

# The SDK, where `tessera new` and `tessera build` put it.
sys.path.insert(0, str(Path(__file__).resolve().parent / "target" / "tessera" / "python"))

import app  # noqa: E402


class Reversal(unittest.TestCase):
    def test_reverses_exactly_and_leaves_the_rest_to_the_model(self):
        self.assertEqual(app.reversal("reverse: stressed"), "desserts")
        self.assertEqual(app.reversal("Reverse:  ab c "), "c ba")
        self.assertIsNone(app.reversal("What is the capital of France?"))


if __name__ == "__main__":
    unittest.main()
"#;

const ROUTER_APP: &str = r#""""A router: ranks the experts whose tags or name words appear in the
request. An empty ranking lets the base model answer."""

import re

from tessera_sdk import Request, Router, RouteChoice, export_router


def rank(question, candidates):
    """The candidates with a tag or name word among the request's words,
    most matches first, scores from 0 to 1."""
    words = set(re.findall(r"\w+", question.lower()))
    scored = []
    for c in candidates:
        labels = list(c.tags) + c.name.split("-")
        hits = sum(1 for label in labels if label.lower() in words)
        if hits:
            scored.append((hits, c.name))
    scored.sort(key=lambda s: -s[0])
    best = scored[0][0] if scored else 1
    return [RouteChoice(name, hits / best) for hits, name in scored]


class Plugin(Router):
    def route(self, req: Request, candidates):
        return rank(req.require_user_message(), candidates)


WitWorld = export_router(Plugin)
"#;

const ROUTER_TEST: &str = r#""""The native unit test: `python3 -m unittest`."""

import sys
import unittest
from pathlib import Path

# The SDK, where `tessera new` and `tessera build` put it.
sys.path.insert(0, str(Path(__file__).resolve().parent / "target" / "tessera" / "python"))

import app  # noqa: E402
from tessera_sdk import ExpertInfo  # noqa: E402


class Ranking(unittest.TestCase):
    def test_ranks_by_matching_tags(self):
        experts = [
            ExpertInfo("calculator", tags=["math"]),
            ExpertInfo("text-stats", tags=["text", "words"]),
        ]
        choices = app.rank("count the words of this text", experts)
        self.assertEqual([c.name for c in choices], ["text-stats"])
        self.assertEqual(app.rank("hello", experts), [])


if __name__ == "__main__":
    unittest.main()
"#;
