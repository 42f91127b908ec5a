#!/usr/bin/env python3
"""Send one MI command to a running sipsockd over its FIFO and time it.

The time measured is from opening the server FIFO to send the request until the reply line has
been read, nothing else: the interpreter's start and the reply FIFO's creation come before it.
The reply FIFO is opened (read-write, so the open never blocks) before the request is sent, so the
daemon can answer the moment it is done; the figure is the daemon's, not a client's polling.

usage: mi_time.py --fifo FIFO --reply-dir DIR [--timeout SECS] [--print] METHOD [NAME=VALUE...]
Prints the milliseconds (3 decimals) on stdout; exit 1 when the reply is a JSON-RPC error or not
JSON, 2 on timeout.
"""

import argparse
import json
import os
import select
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fifo", required=True)
    ap.add_argument("--reply-dir", required=True)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--print", action="store_true", help="print the reply on stderr")
    ap.add_argument("method")
    ap.add_argument("params", nargs="*")
    a = ap.parse_args()

    params = {}
    for p in a.params:
        name, _, value = p.partition("=")
        params[name] = value
    req = {"jsonrpc": "2.0", "method": a.method, "id": 1}
    if params:
        req["params"] = params
    name = "bench_%d_%d" % (os.getpid(), time.monotonic_ns() % 1000000)
    path = os.path.join(a.reply_dir, name)
    os.mkfifo(path, 0o600)
    try:
        rfd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        data = (":%s:%s\n" % (name, json.dumps(req))).encode()
        t0 = time.perf_counter()
        wfd = os.open(a.fifo, os.O_WRONLY)
        os.write(wfd, data)
        os.close(wfd)
        buf = b""
        deadline = time.monotonic() + a.timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                print("mi_time: no reply within %.1f s" % a.timeout, file=sys.stderr)
                return 2
            r, _, _ = select.select([rfd], [], [], left)
            if r:
                try:
                    chunk = os.read(rfd, 1 << 20)
                except BlockingIOError:
                    continue
                buf += chunk
        t1 = time.perf_counter()
        os.close(rfd)
    finally:
        os.unlink(path)
    line = buf.split(b"\n", 1)[0]
    if a.print:
        print(line.decode(errors="replace"), file=sys.stderr)
    print("%.3f" % ((t1 - t0) * 1000.0))
    try:
        reply = json.loads(line)
    except ValueError:
        print("mi_time: reply is not JSON: %r" % line[:200], file=sys.stderr)
        return 1
    if "error" in reply:
        err = json.dumps(reply["error"])
        if len(err) > 400:
            err = err[:400] + "... (%d chars)" % len(err)
        print("mi_time: %s error: %s" % (a.method, err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
