#!/usr/bin/python3
"""Load and hostile clients of the bunq API proxy, for ProxyTests (standard library only).

  concurrent SOCKET CONTEXT PATH N   N GETs at once, one connection each; prints one JSON object:
                                     {"elapsed": s, "replies": [{"status", "error", "retry_after", "done"}...]}
  idle SOCKET N [R]                  opens N connections and sends nothing; prints "opened K refused R" (R got
                                     an immediate answer: over the limits; counted once R answers came, if
                                     given), then "closed C after S" each second
  nonreader SOCKET N                 sends N pipelined requests and never reads an answer; prints "sent", sleeps
"""
import json
import os
import resource
import select
import socket
import sys
import threading
import time

# The repository's Python client: its ProxyConnection is what the README shows applications (no .pyc left
# in the tree).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from bunq_sessiond import ProxyConnection  # noqa: E402


def concurrent(path, context, url, count):
    replies = [None] * count
    barrier = threading.Barrier(count)
    start = [0.0]

    def one(index):
        connection = ProxyConnection(context, path)
        connection.connect()
        barrier.wait()
        if index == 0:
            start[0] = time.monotonic()
        connection.request("GET", url)
        response = connection.getresponse()
        response.read()
        replies[index] = {"status": response.status, "error": response.getheader("X-Bunq-Sessiond-Error"),
                          "retry_after": response.getheader("Retry-After"), "done": time.monotonic()}
        connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for reply in replies:
        reply["done"] = round(reply["done"] - start[0], 3)
    print(json.dumps({"elapsed": max(r["done"] for r in replies), "replies": replies}), flush=True)


def answered(sockets):
    """How many of `sockets` got an answer (bytes to read): a refusal, not the silent close of an idle one."""
    count = 0
    for s in sockets:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                count += 1
        except (BlockingIOError, ConnectionResetError):
            pass
    return count


def readable(sockets):
    """How many of `sockets` have something to read or were closed (poll: select stops at descriptor 1024)."""
    poller = select.poll()
    for s in sockets:
        poller.register(s, select.POLLIN)
    return len(poller.poll(0))


def idle(path, count, expected_refusals=0):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sockets = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        sockets.append(s)
    # Refused connections are answered and closed; admitted ones stay silent. The answers come as the daemon's
    # loop gets to them, which on a loaded machine may take longer than a moment: the count waits for the
    # refusals the caller expects (up to 20 s).
    time.sleep(1)
    deadline = time.monotonic() + 20
    while answered(sockets) < expected_refusals and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = answered(sockets)
    print(f"opened {count - refused} refused {refused}", flush=True)
    began = time.monotonic()
    while True:
        time.sleep(1)
        closed = readable(sockets)
        print(f"closed {closed} after {round(time.monotonic() - began)}", flush=True)


def nonreader(path, count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    request = b"GET /v1/user HTTP/1.1\r\nHost: x\r\n\r\n"  # no X-Bunq-Context: answered by the proxy alone
    sent = 0
    deadline = time.monotonic() + 10
    data = request * count
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += s.send(data[sent:])
        except BlockingIOError:
            time.sleep(0.01)
    print(f"sent {sent // len(request)}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "concurrent":
        concurrent(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "idle":
        idle(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    elif mode == "nonreader":
        nonreader(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")
