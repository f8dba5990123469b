"""`webmoe serve` against real clients: the official `openai` package and curl.

Starts the server binary (WEBMOE_BIN, default target/release/webmoe) on 127.0.0.1
with the embedded model and checks completions, chat, streaming (SSE framing too),
concurrent streams against single requests, stop strings, errors in OpenAI's shape
(400/401/404/429), metrics, a client that disconnects, and graceful shutdown.
Run: python3 tests/server/test_openai_api.py
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("WEBMOE_BIN", os.path.join(ROOT, "target", "release", "webmoe"))
MODEL = "tiny-moe"


class Server:
    """A `webmoe serve` process on a free port."""

    def __init__(self, *args):
        env = dict(os.environ)
        env.setdefault("WGPU_BACKEND", "vulkan")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("server exited: " + "".join(self.log))
            self.log.append(line)
            m = re.search(r"on http://([\d.]+):(\d+)/v1", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise RuntimeError("server did not start: " + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        self.base = f"http://{self.host}:{self.port}/v1"

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def client(self, key="unused"):
        return openai.OpenAI(base_url=self.base, api_key=key, max_retries=0, timeout=120)

    def raw(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, r.getheader("content-type"), data

    def metrics(self):
        return self.raw("GET", "/metrics")[2].decode()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class OpenAiApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--max-sequences", "8")
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def complete(self, prompt, max_tokens=8, **kw):
        return self.client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)

    def test_models_health_and_metrics(self):
        ids = [m.id for m in self.client.models.list()]
        self.assertEqual(ids, [MODEL])
        status, _, body = self.server.raw("GET", "/health")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        self.complete("Memory safety", max_tokens=2)
        text = self.server.metrics()
        for name in ["webmoe_requests_total", "webmoe_generated_tokens_total", "webmoe_queue_depth",
                     "webmoe_active_sequences", "webmoe_decode_tokens_per_second"]:
            self.assertIsNotNone(metric(text, name), name)
        self.assertGreaterEqual(metric(text, "webmoe_generated_tokens_total"), 2)
        self.assertRegex(text, r'webmoe_expert_assignments_total\{layer="3",expert="7"\} \d+')

    def test_completion_with_usage(self):
        r = self.complete("The Rust programming language", max_tokens=8)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.model, MODEL)
        choice = r.choices[0]
        self.assertIn(choice.finish_reason, ("length", "stop"))
        self.assertTrue(choice.text)
        self.assertEqual(r.usage.prompt_tokens, 5)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        if choice.finish_reason == "length":
            self.assertEqual(r.usage.completion_tokens, 8)
        # The same greedy text as `webmoe run`, and the same with the prompt as token ids.
        cli = subprocess.run([BIN, "run", "--greedy", "--max-tokens", "8", "--prompt", "The Rust programming language"],
                             capture_output=True, text=True, timeout=300, check=True).stdout
        self.assertEqual(cli.rstrip("\n"), "The Rust programming language" + choice.text)
        ids = json.loads(subprocess.run([BIN, "run", "--json", "--greedy", "--max-tokens", "1",
                                         "--prompt", "The Rust programming language"],
                                        capture_output=True, text=True, timeout=300, check=True).stdout)["prompt_ids"]
        again = self.client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
        self.assertEqual(again.choices[0].text, choice.text)

    def test_chat_streamed_equals_not_streamed(self):
        messages = [{"role": "system", "content": "Ownership"}, {"role": "user", "content": "What is a crate?"}]
        whole = self.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.choices[0].message.role, "assistant")
        content = whole.choices[0].message.content
        self.assertTrue(content)
        stream = self.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
        pieces, finish, usage, roles = [], None, None, []
        for chunk in stream:
            self.assertEqual(chunk.object, "chat.completion.chunk")
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.role:
                    roles.append(c.delta.role)
                if c.delta.content:
                    pieces.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
        self.assertEqual("".join(pieces), content)
        self.assertEqual(roles, ["assistant"])
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_eight_concurrent_streams_equal_single_requests(self):
        prompts = ["The compiler", "A trait", "Lifetimes are", "The borrow checker", "Unsafe code",
                   "Cargo builds", "A closure", "Iterators"]
        singles = [self.complete(p, max_tokens=8).choices[0].text for p in prompts]

        def stream(p):
            s = self.client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0, stream=True)
            return "".join(c.choices[0].text for c in s if c.choices)

        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(stream, prompts))
        self.assertEqual(together, singles)

    def test_stop_strings_cut_the_text(self):
        full = self.complete("The Rust programming language", max_tokens=16).choices[0].text
        words = full.split()
        self.assertGreater(len(words), 3, full)
        stop = " " + words[2]
        cut = self.complete("The Rust programming language", max_tokens=16, stop=[stop]).choices[0]
        self.assertEqual(cut.text, full[: full.index(stop)])
        self.assertEqual(cut.finish_reason, "stop")
        streamed = self.client.completions.create(model=MODEL, prompt="The Rust programming language", max_tokens=16,
                                                  temperature=0, stop=stop, stream=True)
        self.assertEqual("".join(c.choices[0].text for c in streamed if c.choices), cut.text)

    def test_sampling_with_a_seed_repeats(self):
        a = self.client.completions.create(model=MODEL, prompt="Rust", max_tokens=8, temperature=0.9, top_p=0.9, seed=7)
        b = self.client.completions.create(model=MODEL, prompt="Rust", max_tokens=8, temperature=0.9, top_p=0.9, seed=7)
        self.assertEqual(a.choices[0].text, b.choices[0].text)

    def test_bad_requests_get_openai_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
        self.assertIn("max_tokens", e.exception.body["message"])
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=MODEL, prompt="word " * 400, max_tokens=4)
        self.assertIn("context", e.exception.body["message"])
        with self.assertRaises(openai.BadRequestError):
            self.client.completions.create(model=MODEL, prompt="x", n=2)
        status, ctype, body = self.server.raw("POST", "/v1/chat/completions", body=b'{"messages": [',
                                              headers={"content-type": "application/json"})
        self.assertEqual(status, 400)
        self.assertTrue(ctype.startswith("application/json"))
        err = json.loads(body)["error"]
        self.assertEqual(err["type"], "invalid_request_error")
        self.assertIn("not a valid request", err["message"])

    def test_sse_framing_with_curl(self):
        body = json.dumps({"model": MODEL, "prompt": "The borrow checker", "max_tokens": 4, "temperature": 0,
                           "stream": True})
        # No content-type header: curl's -d sends a form type, accepted as JSON.
        out = subprocess.run(["curl", "-sN", "-D", "-", f"{self.server.base}/completions", "-d", body],
                             capture_output=True, timeout=120, check=True).stdout.decode()
        head, _, events = out.partition("\r\n\r\n")
        self.assertIn("content-type: text/event-stream", head.lower())
        frames = [f for f in events.split("\n\n") if f.strip()]
        self.assertEqual(frames[-1], "data: [DONE]")
        for f in frames:
            self.assertTrue(f.startswith("data: "), repr(f))
        chunks = [json.loads(f[len("data: "):]) for f in frames[:-1]]
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertTrue(all(c["object"] == "text_completion" for c in chunks))

    def test_a_client_that_disconnects_frees_its_sequence(self):
        before = metric(self.server.metrics(), "webmoe_requests_cancelled_total")
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": MODEL, "prompt": "Traits", "max_tokens": 200, "temperature": 0, "stream": True,
             "ignore_eos": True}),
            headers={"content-type": "application/json"})
        r = conn.getresponse()
        r.fp.readline()  # the first event arrived: generation is running
        conn.sock.close()
        conn.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            text = self.server.metrics()
            if metric(text, "webmoe_requests_cancelled_total") > before and metric(text, "webmoe_active_sequences") == 0:
                break
            time.sleep(0.1)
        else:
            self.fail("the disconnected request kept running:\n" + text)
        self.assertLess(metric(text, "webmoe_generated_tokens_total"), 1e9)


class KeyQueueAndShutdown(unittest.TestCase):
    def test_api_key_full_queue_and_graceful_shutdown(self):
        server = Server("--api-key", "sekrit", "--max-sequences", "1", "--max-queue", "1", "--shutdown-grace", "30")
        try:
            with self.assertRaises(openai.AuthenticationError) as e:
                server.client("wrong").models.list()
            self.assertEqual(e.exception.body["code"], "invalid_api_key")
            client = server.client("sekrit")
            self.assertEqual([m.id for m in client.models.list()], [MODEL])
            # One long stream holds the only slot; one more waits; the next gets 429.
            running = client.completions.create(model=MODEL, prompt="Traits", max_tokens=100, temperature=0, stream=True,
                                                extra_body={"ignore_eos": True})
            first = next(iter(running))
            waiting = ThreadPoolExecutor(1).submit(
                lambda: client.completions.create(model=MODEL, prompt="Macros", max_tokens=2, temperature=0))
            deadline = time.time() + 30
            while metric(server.metrics(), "webmoe_queue_depth") != 1 and time.time() < deadline:
                time.sleep(0.05)
            with self.assertRaises(openai.RateLimitError):
                client.completions.create(model=MODEL, prompt="x", max_tokens=1)
            # SIGTERM: the running stream and the waiting request still finish, then the process exits.
            server.proc.send_signal(signal.SIGTERM)
            rest = [c.choices[0] for c in running if c.choices]
            self.assertEqual(rest[-1].finish_reason, "length")
            self.assertEqual(len(first.choices[0].text + "".join(c.text for c in rest)) > 0, True)
            self.assertIn(waiting.result(timeout=60).choices[0].finish_reason, ("length", "stop"))
            self.assertEqual(server.proc.wait(timeout=60), 0, "".join(server.log))
            self.assertIn("shutting down", "".join(server.log))
        finally:
            server.stop(signal.SIGKILL)


if __name__ == "__main__":
    unittest.main(verbosity=2)
