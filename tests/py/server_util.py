"""Starting a real `fennec serve` on a free port for the tests, and a raw HTTP helper for the
requests the openai client cannot send (malformed JSON, wrong methods, huge bodies)."""
import http.client
import json
import re
import subprocess
import threading
import time
import urllib.request

from conftest import FENNEC


class Server:
    def __init__(self, model, *args, api_key=None, env=None):
        cmd = [str(FENNEC), "serve", "-m", str(model), "--port", "0", "-t", "2", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.api_key = api_key
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.log = []
        self.port = None
        deadline = time.time() + 60
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("fennec serve exited: " + "".join(self.log))
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if time.time() > deadline:
                raise RuntimeError("fennec serve did not start")
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        self.base = f"http://127.0.0.1:{self.port}"
        while True:
            status, _ = self.request("GET", "/v1/health/ready")
            if status == 200:
                break
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("fennec serve never became ready: " + "".join(self.log))
            time.sleep(0.1)

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method, path, body=None, headers=None, raw=None, timeout=300):
        """One HTTP request; returns (status, parsed JSON or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if self.api_key and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.api_key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            self.last_headers = dict(r.getheaders())
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text
        except ConnectionError:
            return 0, None
        finally:
            conn.close()

    def metrics(self):
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        return out

    def metric(self, prefix):
        return sum(v for k, v in self.metrics().items() if k.split("{")[0] == prefix)

    def stop(self, sig=None):
        if self.proc.poll() is None:
            self.proc.terminate() if sig is None else self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
