#!/usr/bin/env python3
"""The shop, driven through a running gateway as its clients use it (scripts/deploy-check.sh).

An admin (made beforehand with `mart users create-admin`, password in ADMIN_PASSWORD) creates a
product and stocks it; a customer registers, signs in, orders it, pays with the sandbox provider,
and waits for PAID. Each call's time is printed. Standard library only: it runs on any python3.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

GATEWAY = os.environ.get("GATEWAY", "http://127.0.0.1:8000")


def call(method, path, body=None, token=None, headers=None, expect=200):
    request = urllib.request.Request(GATEWAY + path, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    data = json.dumps(body).encode() if body is not None else None
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, data=data, timeout=30) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    elapsed = (time.monotonic() - started) * 1000
    print(f"  {method:5} {path:48} {status} {elapsed:7.1f} ms")
    if status != expect:
        sys.exit(f"deploy-drive: {method} {path} answered {status}, not {expect}: {text}")
    return json.loads(text) if text else {}


def eventually(what, check, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    sys.exit(f"deploy-drive: {what} did not happen within {seconds} s")


def main():
    admin = call("POST", "/v1/auth/login", {"email": "admin@shop.example", "password": os.environ["ADMIN_PASSWORD"]})
    admin_token = admin["tokens"]["accessToken"]
    sku = "DEPLOY-" + uuid.uuid4().hex[:8].upper()
    product = call(
        "POST", "/v1/products",
        {"sku": sku, "name": "Deploy-check teapot", "price": {"currencyCode": "ZAR", "amountMinor": 19900}},
        token=admin_token)
    product_id = product["id"]
    # The inventory service learns of the product from the catalog's event, through Kafka.
    eventually(
        "the product reaching the inventory service",
        lambda: probe("POST", f"/v1/products/{product_id}/stock:adjust",
                      {"quantityDelta": 5, "reason": "RESTOCK"}, admin_token))

    email = f"customer-{uuid.uuid4().hex[:8]}@shop.example"
    password = uuid.uuid4().hex
    call("POST", "/v1/auth/register", {"email": email, "password": password, "fullName": "Deploy Check"})
    customer = call("POST", "/v1/auth/login", {"email": email, "password": password})["tokens"]["accessToken"]
    order = call(
        "POST", "/v1/orders",
        {
            "items": [{"productId": product_id, "quantity": 2}],
            "shippingAddress": {
                "recipientName": "Deploy Check", "lines": ["1 Long Street"], "city": "Cape Town",
                "countryCode": "ZA",
            },
        },
        token=customer, headers={"Idempotency-Key": '"' + str(uuid.uuid4()) + '"'})
    order_id = order["id"]
    placed = time.monotonic()
    eventually("AWAITING_PAYMENT", lambda: status(order_id, customer) == "AWAITING_PAYMENT")
    payment = call(
        "POST", f"/v1/orders/{order_id}/payments", {"sandboxOutcome": "SUCCEED"}, token=customer,
        headers={"Idempotency-Key": '"' + str(uuid.uuid4()) + '"'})
    if payment.get("payment", {}).get("status") != "SUCCEEDED":
        sys.exit(f"deploy-drive: the sandbox payment did not succeed: {payment}")
    eventually("PAID", lambda: status(order_id, customer) == "PAID")
    print(f"  order {order['number']}: placed -> PAID in {(time.monotonic() - placed) * 1000:.0f} ms")
    # For the caller's check that this order's emails reached the mailbox.
    if os.environ.get("ORDER_NUMBER_FILE"):
        with open(os.environ["ORDER_NUMBER_FILE"], "w") as out:
            out.write(order["number"])


def probe(method, path, body, token):
    """True when the call answers 200 (quietly: it is polled)."""
    request = urllib.request.Request(GATEWAY + path, method=method, data=json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def status(order_id, token):
    request = urllib.request.Request(f"{GATEWAY}/v1/orders/{order_id}")
    request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode()).get("status")


if __name__ == "__main__":
    main()
