"""
Try real client libraries and tools against a real lmproxy, and print what
worked: the evidence behind README.rst's table of clients.

It starts C{lmproxy} on a config of two demo model servers (C{small} and
C{large}, which do not fit together, C{large} with the alias
C{gpt-4o-mini}), then runs each client in a subprocess of its own: a
non-streaming and a streaming chat (or message) each.  A client that is
not installed is reported as such, not as a failure.

Usage (each client from the environment named; default: this Python)::

    python bench/clients.py [--python /path/to/venv/bin/python] [--node-modules DIR]

The Python clients (C{openai}, C{anthropic}, C{langchain-openai},
C{litellm}, the C{llm} CLI) are looked up in C{--python}'s environment;
the node ones (C{openai}, C{@anthropic-ai/sdk}) under C{--node-modules}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PYTHON_CLIENTS = {
    "openai (Python)": """
import openai
c = openai.OpenAI(base_url=BASE + "/v1", api_key="unused")
ids = [m.id for m in c.models.list()]
assert ids == ["small", "large"], ids
a = c.chat.completions.create(model="small", messages=[{"role": "user", "content": "one two"}])
assert a.choices[0].message.content.endswith("one two"), a
s = c.chat.completions.create(model="gpt-4o-mini", stream=True,
                              messages=[{"role": "user", "content": "three four"}])
text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
assert text.endswith("three four"), text
""",
    "anthropic (Python)": """
import anthropic
c = anthropic.Anthropic(base_url=BASE, api_key="unused")
m = c.messages.create(model="small", max_tokens=50,
                      messages=[{"role": "user", "content": "one two"}])
assert m.content[0].text.endswith("one two"), m
with c.messages.stream(model="large", max_tokens=50,
                       messages=[{"role": "user", "content": "three four"}]) as s:
    text = "".join(s.text_stream)
assert text.endswith("three four"), text
n = c.messages.count_tokens(model="small", messages=[{"role": "user", "content": "a b c"}])
assert n.input_tokens > 0, n
""",
    "langchain-openai": """
from langchain_openai import ChatOpenAI
llm = ChatOpenAI(base_url=BASE + "/v1", api_key="unused", model="small")
assert llm.invoke("one two").content.endswith("one two")
text = "".join(chunk.content for chunk in llm.stream("three four"))
assert text.endswith("three four"), text
""",
    "litellm": """
import litellm
r = litellm.completion(model="openai/small", api_base=BASE + "/v1", api_key="unused",
                       messages=[{"role": "user", "content": "one two"}])
assert r.choices[0].message.content.endswith("one two"), r
s = litellm.completion(model="openai/large", api_base=BASE + "/v1", api_key="unused",
                       stream=True, messages=[{"role": "user", "content": "three four"}])
text = "".join(ch.choices[0].delta.content or "" for ch in s)
assert text.endswith("three four"), text
""",
}

NODE_CLIENTS = {
    "openai (node)": """
const OpenAI = require("openai");
(async () => {
  const c = new OpenAI({ baseURL: BASE + "/v1", apiKey: "unused" });
  const ids = [];
  for await (const m of c.models.list()) ids.push(m.id);
  if (ids.join() !== "small,large") throw new Error(ids.join());
  const a = await c.chat.completions.create({ model: "small",
    messages: [{ role: "user", content: "one two" }] });
  if (!a.choices[0].message.content.endsWith("one two")) throw new Error(JSON.stringify(a));
  const s = await c.chat.completions.create({ model: "gpt-4o-mini", stream: true,
    messages: [{ role: "user", content: "three four" }] });
  let text = "";
  for await (const ch of s) text += (ch.choices[0] && ch.choices[0].delta.content) || "";
  if (!text.endsWith("three four")) throw new Error(text);
})().catch((e) => { console.error(e); process.exit(1); });
""",
    "anthropic (node)": """
const Anthropic = require("@anthropic-ai/sdk");
(async () => {
  const c = new Anthropic({ baseURL: BASE, apiKey: "unused" });
  const m = await c.messages.create({ model: "small", max_tokens: 50,
    messages: [{ role: "user", content: "one two" }] });
  if (!m.content[0].text.endsWith("one two")) throw new Error(JSON.stringify(m));
  const s = c.messages.stream({ model: "large", max_tokens: 50,
    messages: [{ role: "user", content: "three four" }] });
  let text = "";
  s.on("text", (t) => { text += t; });
  await s.finalMessage();
  if (!text.endsWith("three four")) throw new Error(text);
})().catch((e) => { console.error(e); process.exit(1); });
""",
}


def free_port() -> int:
    """A port no one listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(api: int, small: int, large: int) -> dict[str, object]:
    """Two demo servers that do not fit together, on the OpenAI port only."""

    def demo(name: str, port: int, **keys: object) -> dict[str, object]:
        return {
            "Name": name,
            "Command": sys.executable,
            "Args": f"-m lmproxy.demo --port {port} --model {name}",
            "ProxyTargetHost": "127.0.0.1",
            "ProxyTargetPort": port,
            "OpenAiApi": True,
            "ResourceRequirements": {"RAM": 6},
            **keys,
        }

    return {
        "OpenAiApi": {"ListenPort": api},
        "ResourcesAvailable": {"RAM": 10},
        "Services": [demo("small", small), demo("large", large, Aliases=["gpt-4o-mini"])],
    }


def wait_listening(port: int, deadline: float) -> None:
    """Return once something accepts on C{port}, or raise at C{deadline}."""
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"lmproxy did not listen on {port}")


def run(command: list[str], env: dict[str, str]) -> tuple[str, str]:
    """Run one client: its verdict and the last line it wrote when it failed."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return "works", ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    if any("ModuleNotFoundError" in line or "Cannot find module" in line for line in lines):
        return "not installed", ""
    return "FAILS", lines[-1] if lines else f"exit {done.returncode}"


def llm_cli(python: str, base: str, env: dict[str, str], home: str) -> tuple[str, str]:
    """The C{llm} CLI, with lmproxy's models in its extra-openai-models.yaml."""
    llm = Path(python).parent / "llm"
    if not llm.exists():
        return "not installed", ""
    Path(home, "extra-openai-models.yaml").write_text(
        "".join(
            f"- model_id: {m}\n  model_name: {m}\n  api_base: {base}/v1\n"
            for m in ("small", "large")
        )
    )
    env = {**env, "LLM_USER_PATH": home, "OPENAI_API_KEY": "unused"}
    verdict, why = run([str(llm), "-m", "small", "one two"], env)
    if verdict == "works":
        verdict, why = run([str(llm), "-m", "large", "--no-stream", "three four"], env)
    return verdict, why


def main() -> None:
    """Start lmproxy, try every client, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the Python of the clients")
    parser.add_argument("--node-modules", help="a node_modules with openai and @anthropic-ai/sdk")
    args = parser.parse_args()
    api, small, large = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work, "config.json")
        path.write_text(json.dumps(config(api, small, large)))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        lmproxy = subprocess.Popen(
            [sys.executable, "-m", "lmproxy", "-c", str(path)],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(api, time.monotonic() + 30)
            base = f"http://127.0.0.1:{api}"
            results = {}
            for name, code in PYTHON_CLIENTS.items():
                results[name] = run([args.python, "-c", f"BASE = {base!r}\n{code}"], env)
            results["llm CLI"] = llm_cli(args.python, base, env, work)
            node = shutil.which("node")
            for name, code in NODE_CLIENTS.items():
                if node is None or args.node_modules is None:
                    results[name] = ("not installed", "")
                    continue
                node_env = {**env, "NODE_PATH": args.node_modules}
                results[name] = run([node, "-e", f"const BASE = {base!r};\n{code}"], node_env)
        finally:
            lmproxy.terminate()
            lmproxy.wait(30)
    width = max(map(len, results))
    for name, (verdict, why) in results.items():
        print(f"{name:<{width}}  {verdict}{'  ' + why if why else ''}")


if __name__ == "__main__":
    main()
