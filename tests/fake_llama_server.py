"""A stand-in for llama.cpp's `llama-server`, for tests: the same command line
and the endpoints LlamaServerBackend uses, with scripted answers.

Each word of the user message becomes one token id (its length); the answer
is "echo: <message>" (after "(after <assistant prefix>)" when one was
prefilled) cut at n_predict tokens, ending with the <|im_end|>
token (id 7) when it fits. A prompt containing SEGFAULT kills the server
with SIGSEGV; FAKE_LLAMA_CRASH_AT_START=1 makes it print a line and segfault
before listening. Its argv is written to FAKE_LLAMA_ARGV_FILE when set.
"""

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EOG = 7
TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"  # ChatML, as Qwen's template (no default system turn here)
ACTIVE = {"now": 0, "max": 0}
LOCK = threading.Condition()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-c", type=int, default=4096)
    ap.add_argument("-np", type=int, default=1)
    ap.add_argument("-t", type=int, default=1)
    ap.add_argument("--no-webui", action="store_true")
    ap.add_argument("--cache-ram", type=int, default=8192)
    ap.add_argument("--no-kv-unified", action="store_true")
    ap.add_argument("--no-repack", action="store_true")
    args = ap.parse_args()
    if os.environ.get("FAKE_LLAMA_ARGV_FILE"):
        with open(os.environ["FAKE_LLAMA_ARGV_FILE"], "w") as f:
            json.dump(sys.argv[1:], f)
    if os.environ.get("FAKE_LLAMA_CRASH_AT_START"):
        print("load_tensors: repacking weights ... general protection fault", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    n_ctx_slot = args.c // args.np

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, obj, code=200):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.reply({"status": "ok"})
            elif self.path == "/props":
                self.reply({"default_generation_settings": {"n_ctx": n_ctx_slot}, "total_slots": args.np,
                            "max_active": ACTIVE["max"]})
            else:
                self.reply({"error": "not found"}, 404)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/apply-template":
                self.reply({"prompt": "".join(TURN.format(**m) for m in body["messages"]) + "<|im_start|>assistant\n"})
            elif self.path == "/tokenize":
                self.reply({"tokens": [EOG] if body["content"] == "<|im_end|>" else [1, 2]})
            elif self.path == "/completion":
                prompt = body["prompt"]
                if "SEGFAULT" in prompt:
                    os.kill(os.getpid(), signal.SIGSEGV)
                if "TOO_LONG" in prompt:  # what llama-server answers when prompt + n_predict exceed the slot
                    self.reply({"error": {"code": 400, "type": "exceed_context_size_error",
                                          "message": "the request exceeds the available context size, try "
                                                     "increasing it", "n_prompt_tokens": 900, "n_ctx": n_ctx_slot}},
                               400)
                    return
                with LOCK:
                    ACTIVE["now"] += 1
                    ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
                    LOCK.notify_all()
                    # overlap with requests sent together: wait (briefly) until every slot is busy, so the
                    # concurrency a test sees does not depend on how loaded the machine is
                    LOCK.wait_for(lambda: ACTIVE["now"] >= args.np, timeout=0.5)
                try:
                    threading.Event().wait(0.02)
                    if prompt.startswith("<|im_start|>"):
                        message = prompt.split("user\n", 1)[1].split("<|im_end|>", 1)[0]
                        prefix = prompt.rsplit("assistant\n", 1)[1]
                    else:  # TALE's raw wrapper
                        message, prefix = prompt.split("\nUser: ", 1)[1].rsplit("\nAssistant:", 1)
                    penalty = body.get("repeat_penalty", 1.0)  # say a penalty that is on, so tests can see it
                    script = ("(penalty {penalty}) ".format(penalty=penalty) if penalty != 1.0 else "") + "echo: " + message
                    if prefix and script.startswith(prefix.strip()):  # a continuation of its own answer: the rest
                        words = script[len(prefix.strip()):].split()
                    else:
                        words = ((f"(penalty {penalty})" if penalty != 1.0 else "")
                                 + (f"(after {prefix})" if prefix else "") + " echo: " + message).split()
                    n = body["n_predict"]
                    out = words[:n]
                    stopped = len(words) < n
                    tokens = [len(w) for w in out] + ([EOG] if stopped else [])
                    lead = " " if prefix and script.startswith(prefix.strip()) else ""
                    content, stop_type = lead + " ".join(out), "eos" if stopped else "limit"
                    reply = {}
                    for k in range(len(out)):  # as llama-server: stop at the word (token) that completes a
                        text = lead + " ".join(out[:k + 1])  # stop string, cut the text before it, no end token
                        hit = min((w for w in body.get("stop", []) if w in text), key=text.find, default=None)
                        if hit is not None:
                            content, stop_type, tokens = text[:text.find(hit)], "word", tokens[:k + 1]
                            reply["stopping_word"] = hit
                            break
                    response = {"content": content, "tokens": tokens, "stop_type": stop_type, "truncated": False,
                                "tokens_predicted": len(tokens), **reply}
                finally:  # a slot is free before its answer leaves: a client may send the next request at once
                    with LOCK:
                        ACTIVE["now"] -= 1
                self.reply(response)
            else:
                self.reply({"error": "not found"}, 404)

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
