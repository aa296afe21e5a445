"""A Python client written only from the service's wire contract.

Standard library only. It runs the flow a Python pharox SDK user goes
through against a running service and exits non-zero, saying where, at the
first answer such a client could not use.

usage: python3 python_client_flow.py BASE_URL ADMIN_KEY CONSUMER_KEY
"""
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

BASE, ADMIN_KEY, CONSUMER_KEY = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]


class Remote(Exception):
    def __init__(self, status, detail):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def call(method, path, key, body=None):
    """Send one request; return (status, decoded JSON or None)."""
    data = None
    headers = {"X-API-Key": key}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        return err.code, payload


def ok(method, path, key, body=None):
    status, payload = call(method, path, key, body)
    if status >= 400:
        detail = payload.get("detail") if isinstance(payload, dict) else payload
        raise Remote(status, detail)
    return payload


def parse_lease(data):
    """Read a lease as a typed client would."""
    lease = {
        "id": uuid.UUID(data["id"]),
        "proxy_id": uuid.UUID(data["proxy_id"]),
        "consumer_id": uuid.UUID(data["consumer_id"]),
        "pool_id": uuid.UUID(data["pool_id"]) if data.get("pool_id") else None,
        "status": data["status"],
        "acquired_at": datetime.fromisoformat(data["acquired_at"]),
        "expires_at": datetime.fromisoformat(data["expires_at"]),
    }
    assert lease["status"] in ("active", "released", "expired"), data
    assert lease["expires_at"].tzinfo is not None, data
    return lease


def acquire(pool_id, consumer, ttl=300, filters=None, strategy="first_available"):
    body = {"pool_id": pool_id, "consumer_id": consumer, "ttl_seconds": ttl, "strategy": strategy}
    if filters:
        body["filters"] = filters
    status, payload = call("POST", "/v1/leases/", CONSUMER_KEY, body)
    if status == 409:
        return None
    if status >= 400:
        raise Remote(status, payload.get("detail"))
    assert status == 201, (status, payload)
    return parse_lease(payload)


def get_lease(lease_id):
    status, payload = call("GET", f"/v1/leases/{lease_id}", CONSUMER_KEY)
    if status == 404:
        return None
    if status >= 400:
        raise Remote(status, payload.get("detail"))
    return parse_lease(payload)


def release(lease_id):
    return parse_lease(ok("POST", f"/v1/leases/{lease_id}/release", CONSUMER_KEY, {}))


def refused(method, path, key, body):
    """Send a request that must be refused; return (status, headers, payload)."""
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(), method=method,
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raise AssertionError(f"{method} {path} answered {resp.status}, want a refusal")
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def main():
    pool = ok("POST", "/v1/pools/", ADMIN_KEY, {"name": "py-main", "description": ""})
    pool_id = pool["id"]
    uuid.UUID(pool_id)
    names = {p["name"]: p["id"] for p in ok("GET", "/v1/pools/", ADMIN_KEY)}
    assert names["py-main"] == pool_id, names

    ar = ok("POST", f"/v1/pools/{pool_id}/proxies/", ADMIN_KEY,
            {"host": "10.30.0.1", "port": 8080, "protocol": "http", "country": "AR"})
    de = ok("POST", f"/v1/pools/{pool_id}/proxies/", ADMIN_KEY,
            {"host": "10.30.0.2", "port": 1080, "protocol": "socks5", "country": "DE"})
    assert len(ok("GET", f"/v1/pools/{pool_id}/proxies/", ADMIN_KEY)) == 2
    for p in (ar, de):
        up = ok("PATCH", f"/v1/pools/{pool_id}/proxies/{p['id']}", ADMIN_KEY, {"status": "active"})
        assert up["status"] == "active", up

    default = acquire(pool_id, "default")
    assert default and default["status"] == "active", default
    assert (default["expires_at"] - default["acquired_at"]).total_seconds() == 300, default

    named = acquire(pool_id, "scraper-7", 120, {"country": "AR"}, "least_used")
    assert named and str(named["proxy_id"]) == ar["id"], named
    assert named["consumer_id"] != default["consumer_id"]

    assert acquire(pool_id, "scraper-7", filters={"country": "BR"}) is None

    # with_lease: acquire, use, release on the way out, even after expiry.
    lease = acquire(pool_id, "scraper-7", 1)
    assert get_lease(lease["id"])["status"] == "active"
    time.sleep(max(0.0, (lease["expires_at"] - datetime.now(timezone.utc)).total_seconds()) + 0.2)
    ended = release(lease["id"])
    assert ended["status"] == "expired", ended
    assert release(lease["id"])["status"] == "expired"

    assert get_lease("nonexistent") is None
    assert get_lease(str(uuid.uuid4())) is None
    for lease_ in (default, named):
        assert release(lease_["id"])["status"] == "released"
        assert release(lease_["id"])["status"] == "released"

    # A release with no body at all, and one reporting the lease's traffic,
    # which the usage report then totals.
    bare = acquire(pool_id, "scraper-8")
    assert parse_lease(ok("POST", f"/v1/leases/{bare['id']}/release", CONSUMER_KEY))["status"] == "released"
    metered = acquire(pool_id, "scraper-8")
    usage = {"requests": 2, "bytes_sent": 10, "bytes_received": 90}
    ended = ok("POST", f"/v1/leases/{metered['id']}/release", CONSUMER_KEY, {"usage": usage})
    assert parse_lease(ended)["status"] == "released" and ended["usage"] == usage, ended
    report = ok("GET", "/v1/usage?group_by=consumer", ADMIN_KEY)
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["scraper-8"]["leases"] == 1 and rows["scraper-8"]["bytes_received"] == 90, report

    # Over a quota: 429, Retry-After in whole seconds, a detail to show.
    ok("PUT", "/v1/quotas/consumer/scraper-9", ADMIN_KEY, {"max_concurrent_leases": 1})
    held = acquire(pool_id, "scraper-9")
    status, headers, payload = refused("POST", "/v1/leases/", CONSUMER_KEY,
                                       {"pool_id": pool_id, "consumer_id": "scraper-9", "ttl_seconds": 60})
    assert status == 429 and int(headers["Retry-After"]) >= 1, (status, dict(headers))
    assert payload["detail"] == 'Consumer "scraper-9" is over its quota max_concurrent_leases=1; retry in 1s', payload
    assert payload["quota"]["limit"] == "max_concurrent_leases" and payload["quota"]["value"] == 1, payload
    release(held["id"])
    ok("DELETE", "/v1/quotas/consumer/scraper-9", ADMIN_KEY)

    for p in (ar, de):
        ok("DELETE", f"/v1/pools/{pool_id}/proxies/{p['id']}", ADMIN_KEY)
    ok("DELETE", f"/v1/pools/{pool_id}", ADMIN_KEY)
    status, payload = call("POST", "/v1/leases/", CONSUMER_KEY,
                           {"pool_id": pool_id, "consumer_id": "default", "ttl_seconds": 300,
                            "strategy": "first_available"})
    assert status == 404 and payload.get("detail"), (status, payload)
    print("python client flow: ok")


if __name__ == "__main__":
    try:
        main()
    except (Remote, AssertionError, KeyError, ValueError) as exc:
        import traceback
        traceback.print_exc()
        print(f"python client flow failed: {exc!r}", file=sys.stderr)
        sys.exit(1)
