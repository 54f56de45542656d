#!/usr/bin/env python3
"""redis-py's RedisCluster against creditd nodes in cluster mode: the client
learns the slots from CLUSTER SLOTS and the key positions from COMMAND, and
routes GRANT, RESERVE, COMMIT and BALANCE by the account's hash slot by
itself, one command at a time and in a cluster pipeline.

server/tests/cluster.rs starts the nodes and runs this script; by hand:

    python cluster.py --ports 7001,7002,7003 [--accounts 200]

Prints every mismatch and exits 1 if there was any.

Needs only the standard library and redis (redis-py 8).
"""

import argparse
import secrets
import sys

import redis
from redis.cluster import ClusterNode, RedisCluster


def as_dict(fields):
    """BALANCE's fields: a map in RESP3, a flat list in RESP2."""
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2]))


def explain(rc, ports, acct, error):
    """What each node says about an account the client failed to route."""
    print(f"GRANT {acct} failed: {error!r}; slot {rc.keyslot(acct)}, "
          f"the client's owner {rc.get_node_from_key(acct).name}")
    for port in ports:
        try:
            plain = redis.Redis(port=port, socket_timeout=5)
            print(f"  BALANCE on {port}: {plain.execute_command('BALANCE', acct)!r}")
        except Exception as e:
            print(f"  BALANCE on {port}: {e!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True, help="comma-separated node ports")
    parser.add_argument("--accounts", type=int, default=200)
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",")]

    rc = RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports],
        decode_responses=True,
        socket_timeout=10,
    )
    failures = []

    def expect(what, got, want):
        if got != want:
            failures.append(f"{what}: got {got!r}, want {want!r}")

    run = secrets.token_hex(4)
    accounts = [f"py-{run}-{i}" for i in range(args.accounts)]
    for i, acct in enumerate(accounts):
        granted = 500 + i
        try:
            reply = rc.execute_command("GRANT", acct, "g-1", granted)
        except Exception as e:
            explain(rc, ports, acct, e)
            raise
        expect(f"GRANT {acct}", reply, granted)
        expect(f"RESERVE {acct}", rc.execute_command("RESERVE", acct, "h-1", 200), 200)
        expect(f"COMMIT {acct}", rc.execute_command("COMMIT", acct, "h-1", 150), 150)
        # The same id again applies nothing.
        expect(f"COMMIT {acct} again", rc.execute_command("COMMIT", acct, "h-1", 150), 150)

    # The client sent each account to its owner: asked directly, the owner
    # answers (a non-owner would answer MOVED).
    served = {}
    for i, acct in enumerate(accounts):
        node = rc.get_node_from_key(acct)
        served[node.name] = served.get(node.name, 0) + 1
        balance = as_dict(node.redis_connection.execute_command("BALANCE", acct))
        granted = 500 + i
        want = {
            "available": granted - 150,
            "held": 0,
            "spent": 150,
            "expired": 0,
            "granted": granted,
        }
        expect(f"BALANCE {acct} on {node.name}", balance, want)
    expect("nodes that served accounts", len(served), len(ports))

    # A cluster pipeline splits the commands by node and puts the replies
    # back in order.
    pipe = rc.pipeline()
    for acct in accounts:
        pipe.execute_command("DEBIT", acct, "d-1", 1)
    expect("pipelined DEBIT replies", pipe.execute(), [1] * len(accounts))
    for i, acct in enumerate(accounts):
        balance = as_dict(rc.execute_command("BALANCE", acct))
        expect(f"BALANCE {acct} after DEBIT", balance["available"], 500 + i - 151)

    for f in failures[:50]:
        print("FAIL", f)
    print(f"{len(accounts)} accounts over {served}: {len(failures)} failures")
    rc.close()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
