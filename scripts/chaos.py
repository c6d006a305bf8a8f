#!/usr/bin/env python3
"""The chaos run (issue 15), started by scripts/chaos.sh after the build and the test bed.

It owns the seven mart processes (`mart serve <service>`, the gateway last), seeds a catalogue,
drives CHAOS_ORDERS orders through the gateway as real clients would (retrying 503/504/429 and
connection errors with the same Idempotency-Key), and meanwhile SIGKILLs and restarts every
process, stops some with SIGTERM (timing the exit), freezes the broker (SIGSTOP/SIGCONT: Tansu
keeps its topics in memory, so a real stop would lose them) and stops PostgreSQL
(`pg_ctl stop -m fast`, then start; data kept). Then it waits until the mart is quiet and checks
the invariants from the databases, the mailbox and the broker, never from responses or logs.

What the test broker adds (Tansu 0.6.0, memory storage), seen in the first runs:
- after the freeze, Tansu answers PRODUCER_FENCED to an idempotent producer whose sends timed
  out during it (librdkafka bumps the producer epoch), and keeps doing so until the process makes
  a new producer: the outbox of a process that is not restarted afterwards stops draining;
- a consumer group whose leader died during a rebalance can stay "rebalance in progress" for
  good (JoinGroup names the dead leader; SyncGroup never completes), so its lag never falls.
The report shows both as FAILs (outbox not drained, lag), with the lagging groups' broker state.

Standard library only, plus psql for queries and confluent-kafka (the wheel scripts/deps.sh
unpacks) for consumer lag and dead letters.
"""
import concurrent.futures
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

DIR = os.environ["CHAOS_DIR"]
BIN = os.environ["CHAOS_BIN"]
ORDERS = int(os.environ.get("CHAOS_ORDERS", "2000"))
RATE = float(os.environ.get("CHAOS_RATE", "12"))
THREADS = int(os.environ.get("CHAOS_THREADS", "24"))
KILLS = int(os.environ.get("CHAOS_KILLS", "3"))
TERMS = int(os.environ.get("CHAOS_TERMS", "1"))
PAYMENT_WINDOW = os.environ.get("CHAOS_PAYMENT_WINDOW", "25s")
DRAIN_TIMEOUT = float(os.environ.get("CHAOS_DRAIN_TIMEOUT", "240"))
SEED = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
BROKER_FREEZE = float(os.environ.get("CHAOS_BROKER_FREEZE", "20"))
PG_STOP = float(os.environ.get("CHAOS_PG_STOP", "10"))
TERM_PATIENCE = float(os.environ.get("CHAOS_TERM_PATIENCE", "30"))  # then SIGKILL

SERVICES = ["user", "product", "inventory", "order", "payment", "notification"]
PROCESSES = SERVICES + ["gateway"]
DATABASES = {s: os.environ[f"MART_{s.upper()}_DATABASE_URL"] for s in SERVICES}
PG_BIN = os.environ["MART_PG_BIN"]
PG_DATA = os.environ["MART_PG_DATA"]
MAILBOX = os.path.join(DIR, "mail")
LOGS = os.path.join(DIR, "logs")
REPORT = os.path.join(DIR, "report.txt")

rng = random.Random(SEED)
T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(message):
    print(f"[{now():7.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------ processes

def read_keys():
    keys = {}
    with open(os.path.join(DIR, "keys.env")) as f:
        for line in f:
            line = line.strip()
            if "=" in line and not line.startswith("#"):
                name, value = line.split("=", 1)
                keys[name] = value
    return keys


def free_port_base():
    import socket
    for _ in range(50):
        base = rng.randrange(20000, 32000, 10)  # below the ephemeral range (32768-)
        ok = True
        for offset in range(7):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + offset))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("chaos: no free ports")


PORT_BASE = free_port_base()
PORTS = {name: PORT_BASE + i for i, name in enumerate(["gateway"] + SERVICES)}
GATEWAY = f"http://127.0.0.1:{PORTS['gateway']}"
KEYS = read_keys()


def base_env():
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("CHAOS_"):
            del env[name]
    for name, port in PORTS.items():
        env[f"MART_{name.upper()}_PORT"] = str(port)
        env[f"MART_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    env["MART_SERVICE_PUBLIC_KEYS"] = KEYS["MART_SERVICE_PUBLIC_KEYS"]
    env.update({
        "MART_LOG_FORMAT": "text",
        "MART_LOG_LEVEL": "info",
        "MART_PAYMENT_SANDBOX_ENABLED": "true",
        "MART_ORDER_PAYMENT_WINDOW": PAYMENT_WINDOW,
        "MART_NOTIFICATION_MAILBOX_DIR": MAILBOX,
        "MART_NOTIFICATION_EMAIL_FROM": "Mart <no-reply@shop.example>",
        "MART_GATEWAY_CONFIG": os.path.join(DIR, "gateway.json"),
    })
    return env


def process_env(name):
    env = base_env()
    own = "MART_GATEWAY_KEY" if name == "gateway" else f"MART_{name.upper()}_SERVICE_KEY"
    env[own] = KEYS[own]
    return env


class Proc:
    def __init__(self, name):
        self.name = name
        self.popen = None
        self.starts = 0
        self.lock = threading.Lock()

    def start(self):
        self.starts += 1
        logfile = open(os.path.join(LOGS, f"{self.name}.log"), "ab")
        logfile.write(f"\n===== chaos: start #{self.starts} at {now():.1f}s =====\n".encode())
        logfile.flush()
        self.popen = subprocess.Popen([BIN, "serve", self.name], env=process_env(self.name),
                                      stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logfile.close()

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def healthy(self):
        if not self.alive():
            return False
        if self.name == "gateway":
            try:
                with urllib.request.urlopen(GATEWAY + "/healthz", timeout=2) as r:
                    return r.status == 200
            except Exception:
                return False
        try:
            result = subprocess.run([BIN, "health", self.name], env=base_env(), capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def wait_healthy(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return True
            if not self.alive():
                return False
            time.sleep(0.25)
        return False


PROCS = {name: Proc(name) for name in PROCESSES}


def start_all():
    for name in SERVICES:
        PROCS[name].start()
    for name in SERVICES:
        if not PROCS[name].wait_healthy(180):
            raise SystemExit(f"chaos: {name} did not become healthy (log: {LOGS}/{name}.log)")
    PROCS["gateway"].start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(GATEWAY + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.3)
    raise SystemExit("chaos: the gateway's /readyz never answered 200")


def stop_all():
    for proc in PROCS.values():
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
    for proc in PROCS.values():
        if proc.popen is not None:
            try:
                proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


# ------------------------------------------------------------------------------------ HTTP client

REQUESTS = []  # (start, end, route, status label)
REQUESTS_LOCK = threading.Lock()
RETRYABLE = {429, 502, 503, 504}


def http(method, path, body=None, token=None, key=None, route=None, timeout=30):
    """One request; returns (status, json or None). Status is an int or 'conn' / 'timeout'."""
    request = urllib.request.Request(GATEWAY + path, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if key:
        request.add_header("Idempotency-Key", '"' + key + '"')
    data = json.dumps(body).encode() if body is not None else None
    started = now()
    status, payload = None, None
    try:
        with urllib.request.urlopen(request, data=data, timeout=timeout) as response:
            status = response.status
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        status = error.code
        try:
            text = error.read().decode()
        except Exception:
            text = ""
    except (TimeoutError, OSError) as error:  # socket.timeout is a TimeoutError subclass
        text = ""
        status = "timeout" if "timed out" in str(error) else "conn"
    except Exception:
        text = ""
        status = "conn"
    ended = now()
    with REQUESTS_LOCK:
        REQUESTS.append((started, ended, route or method + " " + path, status))
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    return status, payload


def call(method, path, body=None, token=None, key=None, route=None, give_up_after=120):
    """Retries what a client retries (same Idempotency-Key); returns the last (status, payload)."""
    deadline = time.monotonic() + give_up_after
    # 409: the first request with this key is still in flight, or died with its process; the order
    # service lets a retry take the key over after its in-flight lease (60 s), so wait longer.
    conflict_deadline = time.monotonic() + 75
    delay = 0.2
    while True:
        status, payload = http(method, path, body, token, key, route)
        retry = status in RETRYABLE or status in ("conn", "timeout") or (
            status == 409 and key is not None and time.monotonic() < conflict_deadline)
        if not retry or time.monotonic() > deadline:
            return status, payload
        time.sleep(delay + rng.random() * delay)
        delay = min(delay * 1.6, 3.0)


# ------------------------------------------------------------------------------------ SQL

def psql(service, sql):
    result = subprocess.run(["psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", DATABASES[service], "-c", sql],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"psql {service}: {result.stderr.strip()}")
    return [line.split("\t") for line in result.stdout.splitlines() if line != ""]


def scalar(service, sql):
    rows = psql(service, sql)
    return rows[0][0] if rows else None


# ------------------------------------------------------------------------------------ set-up

ADMIN_EMAIL = "admin@chaos.example"
ADMIN_PASSWORD = uuid.uuid4().hex


def create_admin():
    result = subprocess.run([BIN, "users", "create-admin", "--email", ADMIN_EMAIL, "--password-stdin"],
                            input=ADMIN_PASSWORD + "\n", env=process_env("user"), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"chaos: create-admin failed: {result.stdout}{result.stderr}")


def login(email, password):
    status, payload = call("POST", "/v1/auth/login", {"email": email, "password": password}, route="login")
    if status != 200:
        raise RuntimeError(f"login {email}: {status} {payload}")
    return payload["tokens"]["accessToken"]


PRODUCTS = []  # (id, initial stock, scarce)


def seed_catalogue(admin):
    plentiful, scarce = 16, 4
    scarce_units = max(3, ORDERS // 60)
    for n in range(plentiful + scarce):
        is_scarce = n >= plentiful
        status, product = call("POST", "/v1/products", {
            "sku": f"CHAOS-{n:03d}-{uuid.uuid4().hex[:6].upper()}", "name": f"Chaos product {n}",
            "price": {"currencyCode": "ZAR", "amountMinor": 1000 + 137 * n}}, token=admin, route="seed")
        if status != 200:
            raise SystemExit(f"chaos: create product: {status} {product}")
        units = scarce_units if is_scarce else 100000
        key = str(uuid.uuid4())
        deadline = time.monotonic() + 60
        while True:  # the inventory service learns of the product through the broker
            status, body = http("POST", f"/v1/products/{product['id']}/stock:adjust",
                                {"quantityDelta": units, "reason": "RESTOCK", "requestId": key}, token=admin, route="seed")
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"chaos: stock adjust: {status} {body}")
            time.sleep(0.3)
        PRODUCTS.append((product["id"], units, is_scarce))
    log(f"catalogue: {plentiful} products with 100000 units, {scarce} with {scarce_units}")


CUSTOMERS = []  # dicts: email, password, token, lock


def register_customers(count):
    for i in range(count):
        email = f"chaos-{i}-{uuid.uuid4().hex[:6]}@shop.example"
        password = uuid.uuid4().hex
        status, body = call("POST", "/v1/auth/register", {"email": email, "password": password, "fullName": f"Chaos Customer {i}"},
                            route="register")
        if status != 200:
            raise SystemExit(f"chaos: register: {status} {body}")
        CUSTOMERS.append({"email": email, "password": password, "token": login(email, password), "lock": threading.Lock()})
    log(f"{count} customers registered")


def authed(customer, method, path, body=None, key=None, route=None, give_up_after=120):
    """call() with a fresh sign-in when the access token has expired (401)."""
    status, payload = call(method, path, body, customer["token"], key, route, give_up_after)
    if status == 401:
        with customer["lock"]:
            customer["token"] = login(customer["email"], customer["password"])
        status, payload = call(method, path, body, customer["token"], key, route, give_up_after)
    return status, payload


# ------------------------------------------------------------------------------------ driver

PLANS = [("pay", 45), ("fail", 12), ("fail_then_pay", 5), ("pending", 10), ("cancel", 10), ("cancel_race", 8), ("ignore", 10)]
OUTCOMES = {}
OUTCOMES_LOCK = threading.Lock()
ORDER_IDS = set()
KEYS_USED = []


def count(outcome):
    with OUTCOMES_LOCK:
        OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1


def pick_plan(r):
    total = sum(w for _, w in PLANS)
    x = r.random() * total
    for name, weight in PLANS:
        if x < weight:
            return name
        x -= weight
    return PLANS[0][0]


def drive_one(index):
    r = random.Random(SEED * 100003 + index)
    customer = CUSTOMERS[index % len(CUSTOMERS)]
    plan = pick_plan(r)
    lines = r.sample([p for p in PRODUCTS if not p[2]], r.randint(1, 3))
    if r.random() < 0.3:
        lines.append(r.choice([p for p in PRODUCTS if p[2]]))
    body = {
        "items": [{"productId": p[0], "quantity": r.randint(1, 3)} for p in lines],
        "shippingAddress": {"recipientName": "Chaos Customer", "lines": ["1 Long Street"], "city": "Cape Town", "countryCode": "ZA"},
    }
    key = str(uuid.uuid4())
    with OUTCOMES_LOCK:
        KEYS_USED.append(key)
    status, order = authed(customer, "POST", "/v1/orders", body, key=key, route="create-order")
    if status != 200:
        count(f"create: gave up ({status})")
        return
    order_id = order["id"]
    with OUTCOMES_LOCK:
        ORDER_IDS.add(order_id)
    # The saga reserves the stock: wait for AWAITING_PAYMENT (or CANCELLED: out of stock).
    state = order.get("status")
    deadline = time.monotonic() + 90
    while state in (None, "PENDING") and time.monotonic() < deadline:
        time.sleep(0.4)
        status, got = authed(customer, "GET", f"/v1/orders/{order_id}", route="get-order")
        if status == 200:
            state = got.get("status")
    if state != "AWAITING_PAYMENT":
        count(f"placed -> {state}")
        return
    count(f"plan {plan}")

    def pay(outcome):
        return authed(customer, "POST", f"/v1/orders/{order_id}/payments", {"sandboxOutcome": outcome},
                      key=str(uuid.uuid4()), route="pay")

    def cancel():
        return authed(customer, "POST", f"/v1/orders/{order_id}:cancel", {"note": "chaos"}, route="cancel")

    if plan == "pay":
        status, _ = pay("SUCCEED")
        count(f"pay -> {status}")
    elif plan == "fail":
        status, _ = pay("FAIL")
        count(f"pay FAIL -> {status}")
    elif plan == "fail_then_pay":
        status, _ = pay("FAIL")
        time.sleep(r.random())
        status, _ = pay("SUCCEED")
        count(f"pay after FAIL -> {status}")
    elif plan == "pending":
        status, _ = pay("STAY_PENDING")
        count(f"pay STAY_PENDING -> {status}")
    elif plan == "cancel":
        status, _ = cancel()
        count(f"cancel -> {status}")
    elif plan == "cancel_race":
        with concurrent.futures.ThreadPoolExecutor(2) as race:
            paid = race.submit(pay, "SUCCEED")
            time.sleep(r.random() * 0.05)
            cancelled = race.submit(cancel)
            count(f"race pay -> {paid.result()[0]}, cancel -> {cancelled.result()[0]}")
    else:
        count("ignored (left to the deadline)")


def drive():
    log(f"driving {ORDERS} orders at {RATE}/s with {THREADS} threads")
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = []
        started = time.monotonic()
        for i in range(ORDERS):
            wait = started + i / RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            futures.append(pool.submit(drive_one, i))
        for f in futures:
            try:
                f.result()
            except Exception as error:  # a driver bug must not hide the run
                count(f"driver error: {type(error).__name__}: {error}")
    log("driver done")


# ------------------------------------------------------------------------------------ faults

FAULTS = []  # dicts: what, start, end, note
TERM_EXITS = []  # (process, seconds, exit code)


def fault(what, start, end, note=""):
    FAULTS.append({"what": what, "start": start, "end": end, "note": note})


def kill_and_restart(name):
    proc = PROCS[name]
    with proc.lock:
        t = now()
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
        time.sleep(0.5 + rng.random() * 1.5)  # a supervisor's restart delay
        proc.start()
        ok = proc.wait_healthy(120)
        fault(f"SIGKILL {name}", t, now(), "" if ok else "NOT HEALTHY AGAIN")


def dump_stacks(proc):
    """Every thread's stack of a process that does not exit after SIGTERM (gdb, if installed)."""
    path = os.path.join(LOGS, f"{proc.name}-sigterm-hang-{proc.starts}.txt")
    try:
        with open(path, "w") as out:
            subprocess.run(["gdb", "-p", str(proc.popen.pid), "-batch", "-ex", "thread apply all bt"],
                           stdout=out, stderr=subprocess.STDOUT, timeout=90)
    except Exception as error:
        with open(path, "a") as out:
            out.write(f"no stacks: {error}\n")


def term_and_restart(name):
    proc = PROCS[name]
    with proc.lock:
        t = now()
        proc.popen.send_signal(signal.SIGTERM)
        try:
            code = proc.popen.wait(TERM_PATIENCE)
            took = now() - t
        except subprocess.TimeoutExpired:
            took = now() - t
            dump_stacks(proc)
            proc.popen.kill()
            code = f"none: still running, SIGKILLed after {TERM_PATIENCE:.0f} s"
            proc.popen.wait()
        TERM_EXITS.append((name, took, code))
        time.sleep(0.5)
        proc.start()
        ok = proc.wait_healthy(120)
        fault(f"SIGTERM {name}", t, now(), f"exit {code} after {took:.2f} s" + ("" if ok else "; NOT HEALTHY AGAIN"))


def tansu_pid():
    with open(os.path.join(DIR, "tansu.pid")) as f:
        return int(f.read().strip())


def freeze_broker():
    pid = tansu_pid()
    t = now()
    os.kill(pid, signal.SIGSTOP)
    time.sleep(BROKER_FREEZE)
    os.kill(pid, signal.SIGCONT)
    fault(f"broker frozen {BROKER_FREEZE:.0f} s (SIGSTOP/SIGCONT)", t, now())


def pg_options():
    """The options the test bed started PostgreSQL with (postmaster.opts), for pg_ctl start -o."""
    with open(os.path.join(PG_DATA, "postmaster.opts")) as f:
        argv = shlex.split(f.read())
    opts, skip = [], False
    for i, arg in enumerate(argv[1:]):
        if skip:
            skip = False
            continue
        if arg == "-D":
            skip = True
            continue
        opts.append(arg)
    return " ".join(shlex.quote(o) for o in opts)


def stop_postgres():
    opts = pg_options()
    as_pg = ["runuser", "-u", "postgres", "--"]
    t = now()
    subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "stop", "-D", PG_DATA, "-m", "fast", "-w", "-s"], check=True)
    stopped = now()
    time.sleep(PG_STOP)
    subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "start", "-D", PG_DATA, "-l", os.path.join(DIR, "postgres.log"),
                            "-w", "-s", "-o", opts], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    fault(f"PostgreSQL stopped {PG_STOP:.0f} s (pg_ctl stop -m fast; start)", t, now(), f"stop took {stopped - t:.2f} s")


def chaos(duration, done):
    """Every fault once at a random moment within the drive's expected duration."""
    events = [("kill", p) for p in PROCESSES for _ in range(KILLS)] + [("term", p) for p in PROCESSES for _ in range(TERMS)]
    events += [("broker", None), ("postgres", None)]
    rng.shuffle(events)
    slot = max(1.0, (duration - 10) / len(events))
    for i, (kind, name) in enumerate(events):
        at = 5 + i * slot + rng.random() * slot * 0.5
        while now() - DRIVE_START < at:
            time.sleep(0.1)
        try:
            if kind == "kill":
                kill_and_restart(name)
            elif kind == "term":
                term_and_restart(name)
            elif kind == "broker":
                freeze_broker()
            else:
                stop_postgres()
        except Exception as error:
            fault(f"{kind} {name or ''}", now(), now(), f"FAULT ERROR: {error}")
        log(f"fault {i + 1}/{len(events)}: {FAULTS[-1]['what']} ({FAULTS[-1]['end'] - FAULTS[-1]['start']:.1f} s) {FAULTS[-1]['note']}")
    done.set()


DRIVE_START = 0.0


# ------------------------------------------------------------------------------------ broker

def kafka():
    from confluent_kafka import Consumer, TopicPartition  # noqa: F401 (PYTHONPATH from chaos.sh)
    return Consumer


GROUP_NOTES = {}


def broker_state(describe=False):
    """(lag per group/topic, dead letters by topic, list of dead-letter descriptions)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient
    brokers = os.environ["KAFKA_BROKERS"]
    probe = Consumer({"bootstrap.servers": brokers, "group.id": "chaos-probe", "enable.auto.commit": False})
    topics = probe.list_topics(timeout=10).topics
    groups = set()
    try:
        admin = AdminClient({"bootstrap.servers": brokers})
        listed = admin.list_consumer_groups(request_timeout=10).result(timeout=20)
        groups = {g.group_id for g in listed.valid if not g.group_id.startswith("chaos-")}
    except Exception as error:
        log(f"list_consumer_groups failed ({error}); using the known groups")
    groups |= {"inventory.catalog", "notification.users", "notification.activity", "order.payments", "payment.orders"}
    known_topics = {"inventory.catalog": ["mart.products.v1"], "notification.users": ["mart.users.v1"],
                    "notification.activity": ["mart.orders.v1", "mart.payments.v1", "mart.inventory.v1"],
                    "order.payments": ["mart.payments.v1"], "payment.orders": ["mart.orders.v1"]}
    lag = {}
    for group in sorted(groups):
        consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
        for topic in known_topics.get(group, [t for t in topics if t.startswith("mart.") and not t.endswith(".dlq")]):
            if topic not in topics:
                continue
            parts = [TopicPartition(topic, p) for p in topics[topic].partitions]
            committed = consumer.committed(parts, timeout=10)
            total = 0
            for tp in committed:
                low, high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                offset = tp.offset if tp.offset >= 0 else low
                total += max(0, high - offset)
            lag[f"{group} {topic}"] = total
        consumer.close()
    lagging = sorted({name.split(" ")[0] for name, n in lag.items() if n})
    if lagging and describe:
        try:
            described = AdminClient({"bootstrap.servers": brokers}).describe_consumer_groups(lagging, request_timeout=10)
            for group, future in described.items():
                d = future.result(timeout=20)  # Tansu may never answer for a group stuck in a rebalance
                GROUP_NOTES[group] = f"{d.state}, members {[m.member_id for m in d.members]}"
        except Exception as error:
            GROUP_NOTES["describe"] = str(error)
    dead = {}
    letters = []
    for topic in sorted(t for t in topics if t.endswith(".dlq")):
        n = 0
        for p in topics[topic].partitions:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            n += high - low
        dead[topic] = n
        if n:
            reader = Consumer({"bootstrap.servers": brokers, "group.id": f"chaos-dlq-{uuid.uuid4()}",
                               "auto.offset.reset": "earliest", "enable.auto.commit": False})
            reader.subscribe([topic])
            deadline = time.monotonic() + 20
            got = 0
            while got < n and time.monotonic() < deadline:
                message = reader.poll(1)
                if message is None or message.error():
                    continue
                got += 1
                headers = {k: (v.decode(errors="replace") if v else "") for k, v in (message.headers() or [])}
                letters.append(f"{topic}[{message.partition()}@{message.offset()}] key={(message.key() or b'').decode(errors='replace')} "
                               f"consumer={headers.get('mart_dlq_consumer')} error={headers.get('mart_dlq_error')} "
                               f"attempts={headers.get('mart_dlq_attempts')}")
            reader.close()
    probe.close()
    return lag, dead, letters


# ------------------------------------------------------------------------------------ drain

def unquiet():
    """What is still moving: a dict of non-zero counts (empty = quiet)."""
    busy = {}
    for service in SERVICES:
        n = int(scalar(service, "SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        if n:
            busy[f"outbox {service}"] = n
    checks = {
        "order: saga steps due": ("order", "SELECT count(*) FROM order_saga_steps WHERE done_at IS NULL AND due_at <= now()"),
        "order: PENDING orders": ("order", "SELECT count(*) FROM orders WHERE status = 'pending'"),
        "order: AWAITING_PAYMENT past deadline": ("order", "SELECT count(*) FROM orders WHERE status = 'awaiting_payment' AND payment_deadline <= now()"),
        "payment: provider calls due": ("payment", "SELECT (SELECT count(*) FROM payments WHERE provider_call_due_at IS NOT NULL) + (SELECT count(*) FROM refunds WHERE status = 'pending')"),
        "notification: deliveries queued": ("notification", "SELECT count(*) FROM deliveries WHERE status IN ('queued', 'sending', 'retrying') AND next_attempt_at <= now()"),
    }
    for name, (service, sql) in checks.items():
        n = int(scalar(service, sql))
        if n:
            busy[name] = n
    lag, _, _ = broker_state()
    for name, n in lag.items():
        if n:
            busy[f"lag {name}"] = n
    return busy


def drain():
    started = time.monotonic()
    last_deadline = scalar("order", "SELECT extract(epoch FROM max(payment_deadline) - now()) FROM orders WHERE status = 'awaiting_payment'")
    wait_deadlines = max(0.0, float(last_deadline or 0)) + 3
    log(f"draining (the last payment deadline is {wait_deadlines:.0f} s away)")
    busy = None
    while time.monotonic() - started < DRAIN_TIMEOUT:
        try:
            busy = unquiet()
        except Exception as error:
            busy = {f"error: {error}": 1}
        if not busy and time.monotonic() - started >= wait_deadlines:
            return time.monotonic() - started, {}
        time.sleep(2)
    return time.monotonic() - started, busy


# ------------------------------------------------------------------------------------ invariants

RESULTS = []  # (name, ok, detail lines)


def check(name, ok, *details):
    RESULTS.append((name, ok, [d for d in details if d]))


def rows_text(rows, limit=10):
    shown = ["    " + " | ".join(r) for r in rows[:limit]]
    if len(rows) > limit:
        shown.append(f"    … and {len(rows) - limit} more")
    return "\n".join(shown)


def invariants(drain_seconds, busy):
    check("drained: outbox empty, no saga step due, consumer lag 0", not busy,
          f"quiet after {drain_seconds:.0f} s" if not busy else f"NOT quiet after {drain_seconds:.0f} s: {busy}")

    # Orders
    by_status = dict((s, int(n)) for s, n in psql("order", "SELECT status, count(*) FROM orders GROUP BY status ORDER BY 1"))
    reasons = psql("order", "SELECT status, coalesce(cancel_reason, '-'), count(*) FROM orders GROUP BY 1, 2 ORDER BY 1, 2")
    stuck = psql("order", "SELECT id, status, payment_deadline FROM orders WHERE status = 'pending' "
                          "OR (status = 'awaiting_payment' AND payment_deadline <= now())")
    check("orders: every order terminal or AWAITING_PAYMENT with a future deadline", not stuck,
          f"{sum(by_status.values())} orders: " + ", ".join(f"{s} {n}" for s, n in by_status.items()),
          "by reason: " + ", ".join(f"{s}/{r} {n}" for s, r, n in reasons),
          f"{len(stuck)} stuck:\n" + rows_text(stuck) if stuck else "")
    db_ids = {r[0] for r in psql("order", "SELECT id FROM orders")}
    missing = sorted(ORDER_IDS - db_ids)
    check("orders: one order per Idempotency-Key, every acknowledged order stored",
          len(db_ids) <= len(KEYS_USED) and not missing,
          f"{len(KEYS_USED)} keys used, {len(db_ids)} orders stored, {len(ORDER_IDS)} acknowledged",
          f"acknowledged but missing: {missing[:10]}" if missing else "")

    # Stock
    stock = {r[0]: r[1:] for r in psql("inventory", "SELECT product_id, on_hand, reserved, available FROM stock")}
    ledger = {r[0]: r[1:] for r in psql("inventory", """
        SELECT product_id,
               coalesce(sum(on_hand_delta) FILTER (WHERE kind = 'adjustment'), 0),
               coalesce(-sum(on_hand_delta) FILTER (WHERE kind = 'commit'), 0),
               coalesce(sum(on_hand_delta) FILTER (WHERE kind = 'return'), 0),
               min(on_hand_after - reserved_after)
        FROM stock_movements GROUP BY product_id""")}
    live = {r[0]: int(r[1]) for r in psql("inventory", """
        SELECT l.product_id, sum(l.quantity) FROM reservation_lines l JOIN reservations r USING (order_id)
        WHERE r.status = 'active' GROUP BY l.product_id""")}
    sold = {r[0]: int(r[1]) for r in psql("order", """
        SELECT l.product_id, sum(l.quantity) FROM order_lines l JOIN orders o ON o.id = l.order_id
        WHERE o.status IN ('paid', 'shipped', 'delivered') GROUP BY l.product_id""")}
    held = {r[0]: int(r[1]) for r in psql("order", """
        SELECT l.product_id, sum(l.quantity) FROM order_lines l JOIN orders o ON o.id = l.order_id
        WHERE o.status = 'awaiting_payment' GROUP BY l.product_id""")}
    bad = []
    for pid, initial, scarce in PRODUCTS:
        on_hand, reserved, available = (int(x) for x in stock.get(pid, (0, 0, 0)))
        adjusted, committed, returned, min_available = (int(x) for x in ledger.get(pid, (0, 0, 0, 0)))
        problems = []
        if adjusted != initial:
            problems.append(f"adjustments {adjusted} != seeded {initial}")
        if on_hand != adjusted - committed + returned:
            problems.append(f"on_hand {on_hand} != {adjusted} - {committed} + {returned}")
        if reserved != live.get(pid, 0):
            problems.append(f"reserved {reserved} != live reservations {live.get(pid, 0)}")
        if available < 0 or min_available < 0:
            problems.append(f"available went negative ({available}, ledger min {min_available})")
        if committed - returned != sold.get(pid, 0):
            problems.append(f"committed {committed} - returned {returned} != sold in PAID orders {sold.get(pid, 0)}")
        if live.get(pid, 0) != held.get(pid, 0):
            problems.append(f"live reservations {live.get(pid, 0)} != AWAITING_PAYMENT lines {held.get(pid, 0)}")
        if problems:
            bad.append(f"    {pid}{' (scarce)' if scarce else ''}: " + "; ".join(problems))
    scarce_left = [int(stock.get(p[0], (0,))[0]) for p in PRODUCTS if p[2]]
    check("stock: on_hand = initial + adjustments - committed; reserved = live reservations; available >= 0; "
          "committed = PAID order lines", not bad,
          f"{len(PRODUCTS)} products; scarce products' on_hand now {scarce_left}", "\n".join(bad))
    # Reservations against order states
    reservations = dict(psql("inventory", "SELECT order_id, status FROM reservations"))
    orders = dict(psql("order", "SELECT id, status FROM orders"))
    expected = {"awaiting_payment": {"active"}, "paid": {"committed"}, "shipped": {"committed"}, "delivered": {"committed"},
                "cancelled": {"released", "returned", None}, "refunded": {"released", "returned", "committed", None}}
    mismatched = [(o, s, str(reservations.get(o))) for o, s in orders.items() if reservations.get(o) not in expected.get(s, {None})]
    orphan = [o for o, s in reservations.items() if s == "active" and o not in orders]
    check("reservations match their orders (AWAITING_PAYMENT active, PAID committed, CANCELLED released)",
          not mismatched and not orphan,
          f"{len(reservations)} reservations",
          f"{len(mismatched)} mismatched (order, order status, reservation):\n" + rows_text([list(m) for m in mismatched]) if mismatched else "",
          f"active reservations of unknown orders: {orphan[:10]}" if orphan else "")

    # Payments
    payments = psql("payment", "SELECT order_id, id, status, surplus, amount_minor, refunded_minor FROM payments")
    took = ("succeeded", "partially_refunded", "refunded")
    per_order = {}
    for order_id, pid, status, surplus, amount, refunded in payments:
        per_order.setdefault(order_id, []).append((pid, status, surplus == "t", int(amount), int(refunded)))
    multiple, paid_wrong, unrefunded, surplus_kept, pending_on_closed = [], [], [], [], []
    for order_id, ps in per_order.items():
        captures = [p for p in ps if p[1] in took and not p[2]]
        if len(captures) > 1:
            multiple.append([order_id] + [f"{p[0]} {p[1]}" for p in captures])
        state = orders.get(order_id)
        if state == "cancelled":
            for p in ps:
                if p[1] in took and p[1] != "refunded":
                    unrefunded.append([order_id, p[0], p[1], f"refunded {p[4]}/{p[3]}"])
        for p in ps:
            if p[2] and p[1] != "refunded":
                surplus_kept.append([order_id, p[0], p[1]])
            if p[1] in ("pending", "processing") and state not in ("awaiting_payment", None):
                pending_on_closed.append([order_id, state, p[0], p[1]])
    for order_id, state in orders.items():
        if state == "paid":
            captures = [p for p in per_order.get(order_id, []) if p[1] in took and not p[2]]
            if len(captures) != 1:
                paid_wrong.append([order_id, f"{len(captures)} captures"])
    by_pstatus = {}
    for p in payments:
        by_pstatus[p[2]] = by_pstatus.get(p[2], 0) + 1
    check("payments: at most one SUCCEEDED per order, exactly one per PAID order", not multiple and not paid_wrong,
          f"{len(payments)} payments: " + ", ".join(f"{s} {n}" for s, n in sorted(by_pstatus.items())),
          f"orders with >1 capture:\n{rows_text(multiple)}" if multiple else "",
          f"PAID orders without exactly one capture:\n{rows_text(paid_wrong)}" if paid_wrong else "")
    refunds = psql("payment", "SELECT status, count(*) FROM refunds GROUP BY 1")
    check("payments: every payment that took money for a CANCELLED order, and every surplus payment, is refunded",
          not unrefunded and not surplus_kept,
          "refunds: " + (", ".join(f"{s} {n}" for s, n in refunds) or "none"),
          f"not refunded:\n{rows_text(unrefunded)}" if unrefunded else "",
          f"surplus payments not refunded:\n{rows_text(surplus_kept)}" if surplus_kept else "")
    check("payments: no PENDING/PROCESSING payment left on a closed order", not pending_on_closed,
          f"{len(pending_on_closed)} (order, order status, payment, status):\n{rows_text(pending_on_closed)}" if pending_on_closed else "")

    # Notifications
    dupes = psql("notification", """SELECT source_event_id, channel, coalesce(recipient, user_id::text), count(*) FROM deliveries
                                    GROUP BY 1, 2, 3 HAVING count(*) > 1""")
    dstatus = psql("notification", "SELECT channel, status, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2")
    ids = {}
    files = 0
    if os.path.isdir(MAILBOX):
        for name in os.listdir(MAILBOX):
            if not name.endswith(".eml"):
                continue
            files += 1
            with open(os.path.join(MAILBOX, name), "rb") as f:
                head = f.read(65536).split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode(errors="replace")
            match = re.search(r"^Message-ID:\s*(\S+)", head, re.IGNORECASE | re.MULTILINE)
            mid = match.group(1) if match else f"(none in {name})"
            ids.setdefault(mid, []).append(name)
    dup_ids = {k: v for k, v in ids.items() if len(v) > 1}
    sent_emails = int(scalar("notification", "SELECT count(*) FROM deliveries WHERE channel = 'email' AND status = 'sent'"))
    check("notifications: one delivery per (event, channel, recipient); no duplicate Message-ID in the mailbox",
          not dupes and not dup_ids,
          "deliveries: " + ", ".join(f"{c}/{s} {n}" for c, s, n in dstatus),
          f"mailbox: {files} .eml files, {len(ids)} Message-IDs, {sent_emails} email deliveries sent",
          f"duplicate deliveries:\n{rows_text(dupes)}" if dupes else "",
          "duplicate Message-IDs: " + "; ".join(f"{k}: {v}" for k, v in list(dup_ids.items())[:10]) if dup_ids else "")

    # Broker
    lag, dead, letters = broker_state(describe=True)
    check("broker: no dead letters", not letters,
          "dead-letter topics: " + (", ".join(f"{t} {n}" for t, n in dead.items()) or "none"),
          "\n".join("    " + x for x in letters[:30]))
    outboxes = {s: int(scalar(s, "SELECT count(*) FROM outbox WHERE published_at IS NULL")) for s in SERVICES}
    check("outbox drained everywhere and consumer lag 0", not any(outboxes.values()) and not any(lag.values()),
          "unpublished: " + ", ".join(f"{s} {n}" for s, n in outboxes.items()),
          "lag: " + ", ".join(f"{g} {n}" for g, n in lag.items()),
          "lagging groups at the broker: " + "; ".join(f"{g}: {n}" for g, n in GROUP_NOTES.items()) if GROUP_NOTES else "")


# ------------------------------------------------------------------------------------ report

def window_stats(start, end):
    with REQUESTS_LOCK:
        inside = [r for r in REQUESTS if start <= r[0] <= end]
    if not inside:
        return "no requests"
    mix = {}
    for r in inside:
        mix[str(r[3])] = mix.get(str(r[3]), 0) + 1
    latencies = sorted((r[1] - r[0]) * 1000 for r in inside)
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    return (f"{len(inside)} req: " + " ".join(f"{k}×{v}" for k, v in sorted(mix.items())) +
            f"; p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {latencies[-1]:.0f} ms")


def report(elapsed):
    lines = [f"== chaos run: {ORDERS} orders at {RATE}/s, {THREADS} threads, seed {SEED}, payment window {PAYMENT_WINDOW}, "
             f"{KILLS} SIGKILL(s) + {TERMS} SIGTERM(s) per process; {elapsed:.0f} s in all",
             "== processes: " + ", ".join(f"{n} {p.starts} start(s)" for n, p in PROCS.items()),
             "", "== invariants"]
    for name, ok, details in RESULTS:
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}")
        for d in details:
            lines.extend("      " + x if not x.startswith("    ") else "  " + x for x in d.split("\n"))
    lines += ["", "== driver outcomes (responses are not trusted for correctness)"]
    for k, v in sorted(OUTCOMES.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {v:6}  {k}")
    lines.append("  all requests: " + window_stats(-1, 1e9))
    lines += ["", "== faults (time from the start of the drive; window = fault until recovered)"]
    for f in sorted(FAULTS, key=lambda f: f["start"]):
        lines.append(f"  {f['start'] - DRIVE_START:6.1f}s +{f['end'] - f['start']:5.1f}s  {f['what']:52} {f['note']}")
        lines.append(f"  {'':15}{window_stats(f['start'], f['end'])}")
    lines += ["", "== SIGTERM exit times"]
    for name, took, code in TERM_EXITS:
        lines.append(f"  {name:13} {took:6.2f} s  exit {code}")
    text = "\n".join(lines) + "\n"
    with open(REPORT, "w") as f:
        f.write(text)
    print("\n" + text, flush=True)


def main():
    global DRIVE_START
    os.makedirs(LOGS, exist_ok=True)
    os.makedirs(MAILBOX, exist_ok=True)
    with open("gateway/gateway.json") as f:
        policy = json.load(f)
    policy["rateLimits"] = {"default": {"limit": 100000000, "window": "1s"}}
    with open(os.path.join(DIR, "gateway.json"), "w") as f:
        json.dump(policy, f, indent=2)
    log(f"seed {SEED}; ports {PORTS}; logs in {LOGS}")
    try:
        start_all()
        log("all seven processes healthy")
        create_admin()
        admin = login(ADMIN_EMAIL, ADMIN_PASSWORD)
        seed_catalogue(admin)
        register_customers(max(10, min(50, ORDERS // 20)))
        DRIVE_START = now()
        done = threading.Event()
        chaos_thread = threading.Thread(target=chaos, args=(ORDERS / RATE, done), daemon=True)
        chaos_thread.start()
        drive()
        chaos_thread.join()
        for proc in PROCS.values():  # anything that died on its own is restarted for the drain
            if not proc.alive():
                log(f"{proc.name} is not running (exit {proc.popen.returncode}); restarting it for the drain")
                fault(f"{proc.name} found dead after the drive", now(), now(), f"exit {proc.popen.returncode}")
                proc.start()
                proc.wait_healthy(120)
        drain_seconds, busy = drain()
        invariants(drain_seconds, busy)
    finally:
        stop_all()
    report(now())
    sys.exit(0 if all(ok for _, ok, _ in RESULTS) else 1)


if __name__ == "__main__":
    main()
