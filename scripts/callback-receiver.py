#!/usr/bin/env python3
"""A receiver for bunq's callbacks, for development against bunq-sandbox (standard library only).

  scripts/callback-receiver.py PORT DIR

Listens on 127.0.0.1:PORT (bunq-sandbox accepts http:// callback targets on loopback; bunq itself calls HTTPS
only). Each POST's body is stored byte for byte as DIR/N.body and its X-Bunq-Server-Signature as DIR/N.sig,
answered 200, and reported on stdout as "received N CATEGORY EVENT_TYPE". Verify a callback with the server
public key your installation got:

  base64 -d DIR/1.sig > sig.bin && openssl dgst -sha256 -verify server.pem -signature sig.bin DIR/1.body
"""
import http.server
import json
import os
import signal
import sys


def main():
    # A parent may have started us with SIGTERM or SIGINT ignored or blocked (both survive exec; a child of a
    # threaded test process inherits its thread's mask): take the defaults back, so a demo or a test that stops
    # us is obeyed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    port, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out, exist_ok=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        count = 0

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            Handler.count += 1
            number = Handler.count
            with open(os.path.join(out, f"{number}.body"), "wb") as f:
                f.write(body)
            with open(os.path.join(out, f"{number}.sig"), "w") as f:
                f.write(self.headers.get("X-Bunq-Server-Signature", ""))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            try:
                notification = json.loads(body)["NotificationUrl"]
                what = f'{notification["category"]} {notification["event_type"]}'
            except (ValueError, KeyError, TypeError):
                what = "(not a NotificationUrl)"
            print(f"received {number} {what}", flush=True)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
