"""A gateway's side of creditd with redis-py: price a job, hold its credits,
keep the hold alive while the job runs, charge what was used, give back the
rest, and retry safely when a reply is lost.

Run it against a creditd started with clients/creditd.toml:
    python gateway.py --port 6479 --gateway-token matrix-gateway --admin-token matrix-admin
"""

import argparse
import re
import secrets
import sys
import time

import redis

VIDEO = "video/kling-2.6-pro/1080/audio"  # 250 credits a second
INSUFFICIENT = re.compile(r"INSUFFICIENT need (\d+) available (\d+)")
ATTEMPTS = 3


class NotEnoughCredits(Exception):
    def __init__(self, need, available):
        super().__init__(f"need {need} credits, {available} available")
        self.need, self.available = need, available


class Credits:
    """creditd for one gateway. Every command that changes credits carries an
    id (the job id), so sending it again is safe: creditd applies it once and
    repeats its first reply."""

    def __init__(self, r):
        self.r = r

    def call(self, *args):
        for attempt in range(ATTEMPTS):
            try:
                return self.r.execute_command(*args)
            except redis.AuthenticationError:
                raise  # a wrong token: retrying will not help
            except (redis.TimeoutError, redis.ConnectionError):
                pass  # the reply was lost: send the same command again
            except redis.ResponseError as e:
                if m := INSUFFICIENT.fullmatch(str(e)):
                    raise NotEnoughCredits(int(m[1]), int(m[2])) from None
                if not str(e).startswith("BUSY "):
                    raise  # NOTFOUND, CONFLICT, EXPIRED, NOTENTITLED, ERR
                # BUSY: nothing was applied; try again a little later.
            if attempt + 1 == ATTEMPTS:
                raise TimeoutError(f"creditd did not answer {args[0]} after {ATTEMPTS} attempts")
            time.sleep(0.05 * 2**attempt)


def run_job(credits, account, job_id, sku, seconds, render_second, ttl_ms=60_000):
    """Renders up to `seconds` seconds of `sku`, one second at a time, and
    charges the seconds actually made. Returns the credits charged."""
    credits.call("RESERVE", account, job_id, "SKU", sku, "QTY", seconds, "TTL", ttl_ms)
    done = 0
    try:
        for second in range(seconds):
            if not render_second(second):
                break  # the model finished early
            done += 1
            credits.call("EXTEND", account, job_id, ttl_ms)  # heartbeat: still running
            credits.call("CAPTURE", account, job_id, "QTY", done)  # usage so far
    except Exception:
        credits.call("RELEASE", account, job_id)  # the job failed: give it all back
        raise
    return credits.call("COMMIT", account, job_id, "QTY", done)


class LoseFirstReply:
    """Stands in for a network that loses one reply: the command reaches
    creditd and is applied, but its reply never comes back."""

    def __init__(self, r):
        self.r, self.lost = r, False

    def execute_command(self, *args):
        reply = self.r.execute_command(*args)
        if not self.lost:
            self.lost = True
            raise redis.TimeoutError("Timeout reading from socket")
        return reply


def balance(r, account):
    reply = r.execute_command("BALANCE", account)  # a dict in RESP3 (redis-py 8's default)
    return {k.decode(): v for k, v in reply.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=6479)
    p.add_argument("--gateway-token", required=True)
    p.add_argument("--admin-token", required=True, help="to grant the demo account its credits")
    a = p.parse_args()
    gateway = redis.Redis(port=a.port, password=a.gateway_token, socket_timeout=5)
    billing = redis.Redis(port=a.port, password=a.admin_token, socket_timeout=5)
    credits = Credits(gateway)
    account = f"demo-{secrets.token_hex(4)}"
    billing.execute_command("GRANT", account, "pack-1", 1000)
    problems = []

    def expect(what, got, want):
        print(f"{what}: {got}")
        if got != want:
            problems.append(f"{what}: got {got!r}, want {want!r}")

    expect("price of 3 s of video", credits.call("QUOTE", VIDEO, 3), 750)
    # A 3-second clip that came out 2 seconds long: 2 seconds are charged.
    expect("charged", run_job(credits, account, "clip-1", VIDEO, 3, lambda s: s < 2), 500)

    def crash(second):
        raise RuntimeError("the model crashed")

    try:
        run_job(credits, account, "clip-2", VIDEO, 2, crash)
    except RuntimeError as e:
        expect("failed job", str(e), "the model crashed")
    expect("after the failed job", balance(gateway, account)["available"], 500)
    try:
        run_job(credits, account, "clip-3", VIDEO, 10, lambda s: True)
        problems.append("a 10 s clip was reserved with 500 credits")
    except NotEnoughCredits as e:
        expect("refused", (e.need, e.available), (2500, 500))
    # The first RESERVE's reply is lost; the retry (same id) is not applied again.
    lossy = Credits(LoseFirstReply(gateway))
    expect("held after a lost reply", lossy.call("RESERVE", account, "clip-4", "SKU", VIDEO, "QTY", 1), 250)
    expect("held once", balance(gateway, account)["held"], 250)
    expect("released", credits.call("RELEASE", account, "clip-4"), 250)
    expect("at the end", balance(gateway, account), dict(available=500, held=0, spent=500, expired=0, granted=1000))
    for problem in problems:
        print("FAIL", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
