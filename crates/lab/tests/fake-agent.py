#!/usr/bin/env python3
"""Stand-in for `migrate agent` in the lab tests.

Accepts the agent's command line (`agent --host H --state-dir D --lease-dir L
--cgroup-parent C`), listens on D/agent.sock like the real agent, and answers every
connection with one line naming its host. Exits 3 on a command line it does not expect,
so a test notices when the lab passes the wrong arguments.
"""
import os
import socket
import sys


def main():
    argv = sys.argv[1:]
    if not argv or argv[0] != "agent":
        print(f"fake-agent: expected 'agent', got {argv!r}", file=sys.stderr)
        return 3
    opts = {}
    rest = argv[1:]
    while rest:
        if len(rest) < 2 or not rest[0].startswith("--"):
            print(f"fake-agent: bad arguments {argv!r}", file=sys.stderr)
            return 3
        opts[rest[0][2:]] = rest[1]
        rest = rest[2:]
    missing = {"host", "state-dir", "lease-dir", "cgroup-parent"} - opts.keys()
    if missing:
        print(f"fake-agent: missing {sorted(missing)}", file=sys.stderr)
        return 3
    path = os.path.join(opts["state-dir"], "agent.sock")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    print(f"fake-agent {opts['host']}: listening on {path} (pid {os.getpid()})", flush=True)
    while True:
        conn, _ = srv.accept()
        try:
            conn.sendall(f"fake-agent {opts['host']}\n".encode())
        except OSError:
            pass
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
