#!/usr/bin/env python3
"""redis-py against a running creditd: every command of the protocol, every
error code, with the sync and the asyncio client, each in RESP2 and RESP3,
through pipelines, MULTI/EXEC and a connection pool shared by threads.

creditd must run with --test-clock and clients/creditd.toml (its tokens, skus
and plans are what this script expects). server/tests/clients.rs starts it
and runs this script; by hand:

    python matrix.py --port 6479 --admin-token matrix-admin \
        --gateway-token matrix-gateway --probe-token matrix-probe [--busy-port P]

--busy-port names a second creditd whose persistence is past its bound, so
that its writes answer BUSY. Each error a client raises is compared with the
error line the server sends for the same command on a plain socket, so a
client that loses or changes a code or a message is caught. Prints every
mismatch and exits 1 if there was any.

Needs only the standard library and redis (redis-py 8).
"""

import argparse
import asyncio
import re
import secrets
import socket
import sys
import threading
import traceback

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

SKU_VIDEO = "video/kling-2.6-pro/1080/audio"  # 250 a second
SKU_IMAGE = "image/flux-2-pro"  # 80 an image, 10% off from 4
SKU_VOICE = "voiceover/standard"  # feature voiceover: not in plan "images"
TIMEOUT_S = 10


class Checks:
    """Counts checks and prints each mismatch; the exit code says if any failed."""

    def __init__(self):
        self.count = 0
        self.failed = 0
        self.sent = set()  # command names sent, for the coverage check
        self.lock = threading.Lock()

    def fail(self, where, what):
        with self.lock:
            self.count += 1
            self.failed += 1
        print(f"FAIL [{where}] {what}", flush=True)

    def ok(self):
        with self.lock:
            self.count += 1

    def eq(self, where, got, want):
        if got == want:
            self.ok()
        else:
            self.fail(where, f"got {got!r}, want {want!r}")

    def true(self, where, cond, what):
        if cond:
            self.ok()
        else:
            self.fail(where, what)

    def record(self, args):
        words = str(args[0]).upper().split()
        name = words[0]
        rest = [str(a).upper() for a in list(words[1:]) + list(args[1:])]
        if name in ("CLIENT", "COMMAND", "CLOCK", "CONFIG") and rest:
            name += " " + rest[0]
        if name == "PLAN" and len(rest) == 2 and rest[1] == "NONE":
            name = "PLAN NONE"
        with self.lock:
            self.sent.add(name)


# ---------------------------------------------------------------------------
# The server's own words: a plain socket speaking RESP2.


class RawError(Exception):
    """An error reply as the server sent it: the whole line, code first."""


class Raw:
    """One RESP connection on a plain socket, to learn the exact error line
    the server sends for a command (what a client must pass on intact)."""

    def __init__(self, port, token=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.reader = self.sock.makefile("rb")
        if token is not None:
            self.call("AUTH", token)

    def close(self):
        self.reader.close()
        self.sock.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        reply = self.read()
        if isinstance(reply, RawError):
            raise reply
        return reply

    def read(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            return RawError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            if n < 0:
                return None
            data = self.reader.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(body)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ConnectionError(f"unexpected reply {line!r}")


def raw_error(port, token, args):
    """The error line the server sends for `args` on a fresh connection
    authenticated with `token` (None: not authenticated)."""
    raw = Raw(port, token)
    try:
        raw.call(*args)
    except RawError as e:
        return str(e)
    finally:
        raw.close()
    return None


def error_line(e):
    """The server's error line as redis-py hands it over. redis-py 8 strips
    the codes it knows (ERR, NOAUTH, WRONGPASS, NOPERM, ...) from the message
    and keeps them in `status_code`; other codes stay in the message."""
    code = getattr(e, "status_code", None)
    return f"{code} {e}" if code else str(e)


# ---------------------------------------------------------------------------
# One scenario for the sync and the asyncio client: the sync client is
# wrapped so that it can be awaited (its calls block, as they do in a real
# sync program).


class SyncClient:
    def __init__(self, r, checks):
        self.r = r
        self.checks = checks

    async def call(self, *args):
        self.checks.record(args)
        return self.r.execute_command(*args)

    async def pipeline(self, commands, transaction):
        p = self.r.pipeline(transaction=transaction)
        for args in commands:
            self.checks.record(args)
            p.execute_command(*args)
        return p.execute(raise_on_error=False)

    async def close(self):
        self.r.close()


class AsyncClient:
    def __init__(self, r, checks):
        self.r = r
        self.checks = checks

    async def call(self, *args):
        self.checks.record(args)
        return await self.r.execute_command(*args)

    async def pipeline(self, commands, transaction):
        p = self.r.pipeline(transaction=transaction)
        for args in commands:
            self.checks.record(args)
            p.execute_command(*args)
        return await p.execute(raise_on_error=False)

    async def close(self):
        await self.r.aclose()


class Variant:
    """One client flavour: sync or asyncio, RESP2 or RESP3."""

    def __init__(self, mode, proto, port, checks, run):
        self.mode = mode
        self.proto = proto
        self.port = port
        self.checks = checks
        self.name = f"{mode} resp{proto}"
        # Accounts of this run only: the script may run again on the same server.
        self.ns = f"py-{run}-{mode}-r{proto}"

    def client(self, password=None, retry_connect=True, **kw):
        """A client; retry_connect=False: a failed connect is reported at once
        (redis-py retries it 3 times with backoff, seconds in all, by default,
        and an AuthenticationError is a ConnectionError)."""
        if not retry_connect:
            retry = redis.retry.Retry if self.mode == "sync" else redis.asyncio.retry.Retry
            kw["retry"] = retry(NoBackoff(), 0)
        opts = dict(
            host="127.0.0.1",
            port=self.port,
            password=password,
            protocol=self.proto,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            **kw,
        )
        if self.mode == "sync":
            return SyncClient(redis.Redis(**opts), self.checks)
        return AsyncClient(redis.asyncio.Redis(**opts), self.checks)

    def fields(self, where, reply, names):
        """A *fields* reply: a flat list in RESP2, a dict in RESP3. Checks the
        type and the field names; returns a dict by field name (str)."""
        c = self.checks
        if self.proto == 2:
            if not (isinstance(reply, list) and len(reply) % 2 == 0):
                c.fail(where, f"RESP2 fields should be a flat list, got {reply!r}")
                return {}
            pairs = list(zip(reply[0::2], reply[1::2]))
        else:
            if not isinstance(reply, dict):
                c.fail(where, f"RESP3 fields should be a dict, got {reply!r}")
                return {}
            pairs = list(reply.items())
        out = {k.decode() if isinstance(k, bytes) else k: v for k, v in pairs}
        c.eq(f"{where}: field names", list(out), names)
        return out


BALANCE_FIELDS = ["available", "held", "spent", "expired", "granted"]
ACCOUNT_FIELDS = BALANCE_FIELDS + ["plan", "seats", "cycle_start", "cycle_end", "buckets", "holds"]
BUCKET_FIELDS = ["id", "kind", "remaining", "expires_at", "priority"]
HOLD_FIELDS = ["id", "amount", "captured", "expires_at"]
HISTORY_FIELDS = ["seq", "at", "op", "id", "amount"]
# What the server's command table must list (COMMAND).
CONTRACT_COMMANDS = {
    "grant", "reserve", "capture", "commit", "release", "extend", "debit",
    "quote", "balance", "account", "history", "subscribe", "seats", "addon",
    "unsubscribe", "plan", "ping", "echo", "auth", "hello", "quit", "select",
    "client", "command", "info", "config", "clock",
}  # fmt: skip
# What this script must have sent at least once.
MUST_SEND = {
    "GRANT", "RESERVE", "CAPTURE", "COMMIT", "RELEASE", "EXTEND", "DEBIT",
    "QUOTE", "BALANCE", "ACCOUNT", "HISTORY", "PLAN", "PLAN NONE", "SEATS",
    "ADDON", "PING", "ECHO", "AUTH", "HELLO", "QUIT", "SELECT",
    "CLIENT SETNAME", "CLIENT GETNAME", "CLIENT ID", "INFO", "CONFIG GET",
    "CONFIG RELOAD", "COMMAND", "COMMAND COUNT", "COMMAND DOCS", "COMMAND GETKEYS", "CLOCK GET",
    "CLOCK SET", "CLOCK ADVANCE",
}  # fmt: skip


def is_ok(v):
    """+OK as redis-py hands it over: True where a callback parsed it, else b"OK"."""
    return v is True or v in (b"OK", "OK")


async def expect_error(v, where, call, code, message, port, token, args):
    """`call` must raise the server's error for `args`: code `code`, message
    matching `message`, and the very line the server sends on a raw socket."""
    c = v.checks
    try:
        got = await call()
    except redis.RedisError as e:
        line = error_line(e)
        c.eq(f"{where}: code", line.split(" ", 1)[0], code)
        c.true(f"{where}: message", re.fullmatch(message, line.split(" ", 1)[1]) is not None,
               f"{line!r} does not match {code} {message}")
        if args is not None:
            c.eq(f"{where}: as the server sent it", line, raw_error(port, token, args))
        return e
    c.fail(where, f"expected {code}, got the reply {got!r}")
    return None


async def connection_commands(v, r, tokens):
    c, w = v.checks, v.name
    c.true(f"{w} PING", await r.call("PING") is True, "PING should be PONG (True)")
    c.eq(f"{w} ECHO", await r.call("ECHO", "hi"), b"hi")
    c.true(f"{w} CLIENT SETNAME", is_ok(await r.call("CLIENT", "SETNAME", v.ns)), "not OK")
    name = await r.call("CLIENT", "GETNAME")
    c.eq(f"{w} CLIENT GETNAME", name, v.ns.encode())
    c.true(f"{w} CLIENT ID", isinstance(await r.call("CLIENT", "ID"), int), "not an integer")
    c.true(f"{w} SELECT 0", is_ok(await r.call("SELECT", 0)), "not OK")
    hello = await r.call("HELLO", v.proto, "AUTH", "default", tokens.admin)
    h = v.fields(f"{w} HELLO", hello, ["server", "version", "proto", "id", "mode", "role", "modules"])
    c.eq(f"{w} HELLO proto", h.get("proto"), v.proto)
    c.eq(f"{w} HELLO server", h.get("server"), b"creditd")
    info = await r.call("INFO")
    c.true(f"{w} INFO", isinstance(info, dict) and "creditd_version" in info, f"{info!r}")
    persistence = await r.call("INFO", "persistence")
    c.eq(f"{w} INFO persistence", (persistence.get("journal_fsync"), persistence.get("redis_connected")), ("everysec", 0))
    # An empty array in RESP2, an empty map in RESP3, as Redis 7 replies
    # (r.config_get() would make both a dict).
    c.eq(f"{w} CONFIG GET", await r.call("CONFIG", "GET", "*"), [] if v.proto == 2 else {})
    c.true(f"{w} CONFIG RELOAD", is_ok(await r.call("CONFIG", "RELOAD")), "not OK")
    # "COMMAND COUNT" in one string: redis-py would parse a COMMAND reply
    # (a table) for execute_command("COMMAND", "COUNT").
    count = await r.call("COMMAND COUNT")
    table = await r.call("COMMAND")
    c.true(f"{w} COMMAND", isinstance(table, dict) and CONTRACT_COMMANDS <= set(table), f"{sorted(table)!r}")
    c.eq(f"{w} COMMAND COUNT", count, len(table))
    # DOCS: name -> {summary, since, group}; a flat list in RESP2.
    docs = await r.call("COMMAND DOCS", "reserve")
    flat = docs if v.proto == 2 else [k for kv in docs.items() for k in kv]
    entry = flat[1] if v.proto == 2 else [k for kv in flat[1].items() for k in kv]
    names = [x.decode() if isinstance(x, bytes) else x for x in [flat[0]] + list(entry)]
    c.true(
        f"{w} COMMAND DOCS",
        names[0] == "reserve" and names[1::2] == ["summary", "since", "group"] and names[-1] == "creditd",
        f"{docs!r}",
    )
    # GETKEYS: the account, as a cluster client asks it.
    keys = await r.call("COMMAND GETKEYS", "RESERVE", "{team}:a", "h1", "10")
    c.eq(f"{w} COMMAND GETKEYS", [k.decode() if isinstance(k, bytes) else k for k in keys], ["{team}:a"])
    now = await r.call("CLOCK", "GET")
    c.true(f"{w} CLOCK GET", isinstance(now, int) and now > 1_600_000_000_000, f"{now!r}")
    c.eq(f"{w} CLOCK SET", await r.call("CLOCK", "SET", now + 1000), now + 1000)
    c.eq(f"{w} CLOCK ADVANCE", await r.call("CLOCK", "ADVANCE", 500), now + 1500)


async def credit_commands(v, r):
    """The credits story of docs/PROTOCOL.md, with the totals checked."""
    c, w, a = v.checks, v.name, f"{v.ns}-acme"
    now = await r.call("CLOCK", "GET")
    c.eq(f"{w} GRANT", await r.call("GRANT", a, "pack", 5000), 5000)
    c.eq(f"{w} GRANT retry", await r.call("GRANT", a, "pack", 5000), 5000)
    c.eq(f"{w} GRANT KIND TTL PRIORITY",
         await r.call("GRANT", a, "promo", 100, "KIND", "promo", "TTL", 604800000, "PRIORITY", 10), 5100)
    c.eq(f"{w} GRANT EXPIRES", await r.call("GRANT", a, "late", 50, "KIND", "addon", "EXPIRES", now + 3600000), 5150)
    c.eq(f"{w} PLAN SEATS", await r.call("PLAN", a, "pro", "SEATS", 2), 6150)
    c.eq(f"{w} SEATS", await r.call("SEATS", a, 3), 6650)
    c.eq(f"{w} ADDON", await r.call("ADDON", a, 2), 6770)
    c.eq(f"{w} QUOTE", await r.call("QUOTE", SKU_IMAGE, 4), 288)
    c.eq(f"{w} RESERVE SKU TTL", await r.call("RESERVE", a, "job-1", "SKU", SKU_VIDEO, "QTY", 10, "TTL", 60000), 2500)
    c.eq(f"{w} EXTEND", await r.call("EXTEND", a, "job-1", 120000), now + 120000)
    c.eq(f"{w} CAPTURE QTY", await r.call("CAPTURE", a, "job-1", "QTY", 3), 750)
    c.eq(f"{w} CAPTURE lower total", await r.call("CAPTURE", a, "job-1", 500), 750)
    c.eq(f"{w} COMMIT QTY", await r.call("COMMIT", a, "job-1", "QTY", 7), 1750)
    c.eq(f"{w} COMMIT retry", await r.call("COMMIT", a, "job-1", "QTY", 7), 1750)
    c.eq(f"{w} RESERVE amount", await r.call("RESERVE", a, "job-2", 300), 300)
    c.eq(f"{w} COMMIT whole hold", await r.call("COMMIT", a, "job-2"), 300)
    c.eq(f"{w} RESERVE TTL", await r.call("RESERVE", a, "job-3", 400, "TTL", 60000), 400)
    c.eq(f"{w} COMMIT total", await r.call("COMMIT", a, "job-3", 250), 250)
    c.eq(f"{w} RESERVE", await r.call("RESERVE", a, "job-4", 200), 200)
    c.eq(f"{w} RELEASE", await r.call("RELEASE", a, "job-4"), 200)
    c.eq(f"{w} RELEASE retry", await r.call("RELEASE", a, "job-4"), 200)
    c.eq(f"{w} DEBIT SKU", await r.call("DEBIT", a, "gen-1", "SKU", SKU_IMAGE, "QTY", 4), 288)
    c.eq(f"{w} DEBIT amount", await r.call("DEBIT", a, "gen-2", 10), 10)
    c.eq(f"{w} RESERVE open", await r.call("RESERVE", a, "open-1", 100, "TTL", 600000), 100)

    spent = 1750 + 300 + 250 + 288 + 10
    b = v.fields(f"{w} BALANCE", await r.call("BALANCE", a), BALANCE_FIELDS)
    c.eq(f"{w} BALANCE", b, dict(available=6770 - spent - 100, held=100, spent=spent, expired=0, granted=6770))

    acct = v.fields(f"{w} ACCOUNT", await r.call("ACCOUNT", a), ACCOUNT_FIELDS)
    c.eq(f"{w} ACCOUNT totals", {k: acct.get(k) for k in BALANCE_FIELDS}, b)
    c.eq(f"{w} ACCOUNT plan", (acct.get("plan"), acct.get("seats"), acct.get("cycle_start")), (b"pro", 3, now))
    c.true(f"{w} ACCOUNT cycle_end", isinstance(acct.get("cycle_end"), int) and acct["cycle_end"] > now, f"{acct.get('cycle_end')!r}")
    buckets = [v.fields(f"{w} ACCOUNT bucket", x, BUCKET_FIELDS) for x in acct.get("buckets") or []]
    # Spending order took the promo (priority 10), then the soonest to
    # expire (late, then the plan's), then the pack that never expires.
    c.eq(f"{w} ACCOUNT buckets", buckets,
         [dict(id=b"pack", kind=b"prepaid", remaining=b["available"], expires_at=0, priority=50)])
    holds = [v.fields(f"{w} ACCOUNT hold", x, HOLD_FIELDS) for x in acct.get("holds") or []]
    c.eq(f"{w} ACCOUNT holds", holds, [dict(id=b"open-1", amount=100, captured=0, expires_at=now + 600000)])

    history = await r.call("HISTORY", a, "COUNT", 3)
    c.true(f"{w} HISTORY", isinstance(history, list) and len(history) == 3, f"{history!r}")
    entries = [v.fields(f"{w} HISTORY entry", x, HISTORY_FIELDS) for x in history or []]
    c.eq(f"{w} HISTORY newest first", [(e.get("op"), e.get("id"), e.get("amount")) for e in entries],
         [(b"reserve", b"open-1", 100), (b"debit", b"gen-2", 10), (b"debit", b"gen-1", 288)])
    seqs = [e.get("seq") for e in entries]
    c.true(f"{w} HISTORY seq", seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 3, f"{seqs!r}")

    c.true(f"{w} PLAN NONE", is_ok(await r.call("PLAN", a, "NONE")), "not OK")
    acct = v.fields(f"{w} ACCOUNT after PLAN NONE", await r.call("ACCOUNT", a), ACCOUNT_FIELDS)
    c.eq(f"{w} ACCOUNT after PLAN NONE", (acct.get("plan"), acct.get("seats")), (b"", 0))


async def error_codes(v, r, tokens):
    """Every code reaches the caller with its code and message intact."""
    c, w, a, img = v.checks, v.name, f"{v.ns}-err", f"{v.ns}-img"
    port, admin = v.port, tokens.admin
    now = await r.call("CLOCK", "GET")
    c.eq(f"{w} GRANT", await r.call("GRANT", a, "g1", 1000), 1000)
    c.eq(f"{w} PLAN ANCHOR", await r.call("PLAN", img, "images", "ANCHOR", now - 86400000), 100)
    c.eq(f"{w} RESERVE h1", await r.call("RESERVE", a, "h1", 10), 10)
    c.eq(f"{w} COMMIT h1", await r.call("COMMIT", a, "h1"), 10)

    cases = [
        ("ERR bad number", ["RESERVE", a, "e1", "-1"], "ERR", r"amount is not an integer or out of range"),
        ("ERR unknown command", ["NOSUCH", a], "ERR", r"unknown command 'NOSUCH'.*"),
        ("ERR SELECT 1", ["SELECT", 1], "ERR", r"DB index is out of range"),
        ("INSUFFICIENT", ["RESERVE", a, "big", 10**12], "INSUFFICIENT", r"need 1000000000000 available 990"),
        ("INSUFFICIENT DEBIT", ["DEBIT", a, "big", 991], "INSUFFICIENT", r"need 991 available 990"),
        ("NOTFOUND sku", ["QUOTE", "no/such", 1], "NOTFOUND", r".*no/such.*"),
        ("NOTFOUND hold", ["COMMIT", a, "nohold"], "NOTFOUND", r".+"),
        ("NOTFOUND plan", ["PLAN", a, "nosuchplan"], "NOTFOUND", r".*nosuchplan.*"),
        ("CONFLICT grant", ["GRANT", a, "g1", 999], "CONFLICT", r".+"),
        ("CONFLICT release after commit", ["RELEASE", a, "h1"], "CONFLICT", r".+"),
        ("NOTENTITLED", ["DEBIT", img, "v1", "SKU", SKU_VOICE, "QTY", 1], "NOTENTITLED", r".*voiceover.*"),
    ]
    for label, args, code, message in cases:
        await expect_error(v, f"{w} {label}", lambda args=args: r.call(*args), code, message, port, admin, args)

    # EXPIRED: the clock runs past a hold's end.
    c.eq(f"{w} RESERVE short", await r.call("RESERVE", a, "short", 5, "TTL", 1000), 5)
    c.eq(f"{w} CLOCK ADVANCE", await r.call("CLOCK", "ADVANCE", 1000), now + 1000)
    for args in (["COMMIT", a, "short"], ["CAPTURE", a, "short", 1], ["EXTEND", a, "short", 1000]):
        await expect_error(v, f"{w} EXPIRED {args[0]}", lambda args=args: r.call(*args), "EXPIRED", r".+", port, admin, args)
    c.eq(f"{w} RELEASE expired", await r.call("RELEASE", a, "short"), 0)


async def auth_and_roles(v, tokens):
    """AUTH and HELLO AUTH; NOAUTH, WRONGPASS and NOPERM as raised errors.

    redis-py authenticates while it connects (AUTH in RESP2, HELLO 3 AUTH in
    RESP3), so a client without a password fails at connect: in RESP2 on
    the CLIENT SETINFO it sends first, in RESP3 on HELLO 3."""
    c, w, port = v.checks, v.name, v.port
    a = f"{v.ns}-auth"
    first = ["CLIENT", "SETINFO", "LIB-NAME", "redis-py"] if v.proto == 2 else ["HELLO", "3"]
    message = r"Authentication required\." if v.proto == 2 else r"HELLO must be called with the client already authenticated.*"
    r = v.client(retry_connect=False)
    await expect_error(v, f"{w} NOAUTH", lambda: r.call("BALANCE", a), "NOAUTH", message, port, None, first)
    await r.close()

    r = v.client(password="not-a-token", retry_connect=False)
    await expect_error(v, f"{w} WRONGPASS", lambda: r.call("QUOTE", SKU_IMAGE, 1), "WRONGPASS",
                       r"invalid username-password pair or user is disabled\.", port, None, ["AUTH", "not-a-token"])
    await r.close()

    # A probe may not read balances; AUTH with another token changes the role.
    r = v.client(password=tokens.probe, single_connection_client=True)
    c.true(f"{w} probe INFO", "creditd_version" in await r.call("INFO"), "INFO without creditd_version")
    await expect_error(v, f"{w} NOPERM probe BALANCE", lambda: r.call("BALANCE", a), "NOPERM",
                       r"this user has no permissions to run the 'balance' command", port, tokens.probe, ["BALANCE", a])
    c.true(f"{w} AUTH", is_ok(await r.call("AUTH", tokens.gateway)), "not OK")
    c.eq(f"{w} BALANCE after AUTH", v.fields(f"{w} BALANCE", await r.call("BALANCE", a), BALANCE_FIELDS)["available"], 0)
    c.eq(f"{w} gateway QUOTE", await r.call("QUOTE", SKU_IMAGE, 3), 240)
    await expect_error(v, f"{w} NOPERM gateway GRANT", lambda: r.call("GRANT", a, "g", 1), "NOPERM",
                       r"this user has no permissions to run the 'grant' command", port, tokens.gateway, ["GRANT", a, "g", 1])
    c.true(f"{w} AUTH user token", is_ok(await r.call("AUTH", "any-user", tokens.admin)), "not OK")
    c.true(f"{w} HELLO AUTH", v.fields(f"{w} HELLO", await r.call("HELLO", v.proto, "AUTH", "default", tokens.gateway),
                                       ["server", "version", "proto", "id", "mode", "role", "modules"]).get("proto") == v.proto,
           "HELLO AUTH did not keep the protocol")
    c.true(f"{w} QUIT", is_ok(await r.call("QUIT")), "not OK")
    await r.close()


async def pipelines(v, r):
    """A plain pipeline and MULTI/EXEC: replies in order, an error in its place."""
    c, w, a = v.checks, v.name, f"{v.ns}-pipe"
    c.eq(f"{w} GRANT", await r.call("GRANT", a, "g", 1000), 1000)
    commands, want = [], []
    for i in range(20):
        commands += [["RESERVE", a, f"p{i}", 5], ["COMMIT", a, f"p{i}", 3]]
        want += [5, 3]
    commands.append(["RESERVE", a, "too-big", 10**6])
    commands.append(["BALANCE", a])
    got = await r.pipeline(commands, transaction=False)
    c.eq(f"{w} pipeline replies", got[:40], want)
    c.true(f"{w} pipeline error in place", isinstance(got[40], redis.ResponseError)
           and error_line(got[40]) == "INSUFFICIENT need 1000000 available 940", f"{got[40]!r}: {got[40]}")
    b = v.fields(f"{w} pipeline BALANCE", got[41], BALANCE_FIELDS)
    c.eq(f"{w} pipeline BALANCE", (b.get("available"), b.get("spent")), (940, 60))

    got = await r.pipeline([
        ["RESERVE", a, "t1", 50],
        ["RESERVE", a, "t2", 10**6],
        ["COMMIT", a, "t1", 40],
        ["BALANCE", a],
    ], transaction=True)
    c.eq(f"{w} MULTI/EXEC replies", [got[0], got[2]], [50, 40])
    c.true(f"{w} MULTI/EXEC error in place", isinstance(got[1], redis.ResponseError)
           and error_line(got[1]) == "INSUFFICIENT need 1000000 available 890", f"{got[1]!r}: {got[1]}")
    b = v.fields(f"{w} MULTI/EXEC BALANCE", got[3], BALANCE_FIELDS)
    c.eq(f"{w} MULTI/EXEC BALANCE", (b.get("available"), b.get("spent")), (900, 100))


THREADS = 8
PER_THREAD = 25


def pool_threads_sync(v, tokens):
    """One blocking pool of 4 connections shared by 8 threads; every DEBIT
    is also retried with its id, which must not spend twice."""
    c, w, a = v.checks, v.name, f"{v.ns}-pool"
    pool = redis.BlockingConnectionPool(host="127.0.0.1", port=v.port, password=tokens.admin, protocol=v.proto,
                                        max_connections=4, timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
    r = redis.Redis(connection_pool=pool)
    c.eq(f"{w} GRANT", r.execute_command("GRANT", a, "g", 1000), 1000)
    errors = []

    def work(t):
        try:
            for i in range(PER_THREAD):
                for _ in range(2):
                    got = r.execute_command("DEBIT", a, f"t{t}-{i}", 1)
                    if got != 1:
                        errors.append(f"DEBIT t{t}-{i} replied {got!r}")
        except Exception as e:  # reported below, with the thread
            errors.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    c.eq(f"{w} pool threads", errors, [])
    c.true(f"{w} pool threads finished", not any(t.is_alive() for t in threads), "a thread hung")
    b = v.fields(f"{w} pool BALANCE", r.execute_command("BALANCE", a), BALANCE_FIELDS)
    n = THREADS * PER_THREAD
    c.eq(f"{w} pool BALANCE", (b.get("available"), b.get("spent")), (1000 - n, n))
    c.true(f"{w} pool size", len(pool._connections) <= 4, f"{len(pool._connections)} connections")
    r.close()
    pool.disconnect()


async def pool_tasks_async(v, tokens):
    """The asyncio counterpart: 8 tasks on one client with a pool of 4."""
    c, w, a = v.checks, v.name, f"{v.ns}-pool"
    pool = redis.asyncio.BlockingConnectionPool(host="127.0.0.1", port=v.port, password=tokens.admin,
                                                protocol=v.proto, max_connections=4, timeout=TIMEOUT_S,
                                                socket_timeout=TIMEOUT_S)
    r = redis.asyncio.Redis(connection_pool=pool)
    c.eq(f"{w} GRANT", await r.execute_command("GRANT", a, "g", 1000), 1000)

    async def work(t):
        replies = []
        for i in range(PER_THREAD):
            for _ in range(2):
                replies.append(await r.execute_command("DEBIT", a, f"t{t}-{i}", 1))
        return replies

    results = await asyncio.wait_for(asyncio.gather(*(work(t) for t in range(THREADS))), 60)
    c.eq(f"{w} pool tasks", [x for rs in results for x in rs], [1] * (THREADS * PER_THREAD * 2))
    b = v.fields(f"{w} pool BALANCE", await r.execute_command("BALANCE", a), BALANCE_FIELDS)
    n = THREADS * PER_THREAD
    c.eq(f"{w} pool BALANCE", (b.get("available"), b.get("spent")), (1000 - n, n))
    await r.aclose()
    await pool.aclose()


async def busy(v, busy_port, tokens):
    """A server whose persistence is past its bound answers writes BUSY."""
    c, w = v.checks, v.name
    saved, v.port = v.port, busy_port
    r = v.client(password=tokens.admin)
    try:
        for i in range(10):
            args = ["GRANT", f"{v.ns}-busy", f"g{i}", 1]
            try:
                await r.call(*args)
            except redis.ResponseError as e:
                line = error_line(e)
                c.true(f"{w} BUSY code", line.startswith("BUSY ") and "retry later" in line, line)
                c.eq(f"{w} BUSY as the server sent it", line, raw_error(busy_port, tokens.admin, args))
                return
        c.fail(f"{w} BUSY", "10 writes accepted by a server past its bound")
    finally:
        await r.close()
        v.port = saved


async def run_variant(v, tokens, busy_port):
    r = v.client(password=tokens.admin)
    try:
        await connection_commands(v, r, tokens)
        await credit_commands(v, r)
        await error_codes(v, r, tokens)
        await pipelines(v, r)
    finally:
        await r.close()
    await auth_and_roles(v, tokens)
    if v.mode == "sync":
        pool_threads_sync(v, tokens)
    else:
        await pool_tasks_async(v, tokens)
    if busy_port:
        await busy(v, busy_port, tokens)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin-token", dest="admin", required=True)
    p.add_argument("--gateway-token", dest="gateway", required=True)
    p.add_argument("--probe-token", dest="probe", required=True)
    p.add_argument("--busy-port", type=int, help="a creditd whose writes answer BUSY")
    tokens = p.parse_args()
    checks = Checks()
    run = secrets.token_hex(3)
    print(f"redis-py {redis.__version__}", flush=True)
    if not tokens.busy_port:
        print("BUSY not checked: no --busy-port", flush=True)
    for mode in ("sync", "async"):
        for proto in (2, 3):
            v = Variant(mode, proto, tokens.port, checks, run)
            before = checks.failed
            try:
                asyncio.run(run_variant(v, tokens, tokens.busy_port))
            except Exception:
                checks.fail(v.name, "raised:\n" + traceback.format_exc())
            print(f"{v.name}: {'ok' if checks.failed == before else 'FAILED'}", flush=True)
    missing = MUST_SEND - checks.sent
    checks.true("coverage", not missing, f"never sent: {sorted(missing)}")
    print(f"python matrix: {checks.count} checks, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
