"""An SMTP server on loopback for the SMTP tests (aiosmtpd 1.4.6; run on MART_AIOSMTPD_PYTHON).

    smtp-test-server.py --port 0 --maildir DIR [--tls-cert F --tls-key F] [--require-starttls]
                        [--auth USER:PASSWORD]

Prints `READY <port>` once it listens, then serves until SIGTERM. Each accepted message becomes
DIR/<n>.eml (the DATA as received, dot-stuffing undone) and DIR/<n>.json (its envelope); each AUTH
attempt adds a line to DIR/auth.log (mechanism and user, never the password).

The recipient's local part chooses what happens, so that one server serves every test case:
  tempfail-N+x@...  the first N RCPT TO for that exact address answer 451, later ones are accepted
  reject+x@...      RCPT answers 550 5.1.1
  hang+x@...        the reply to the message's final "." never comes
  hangrcpt+x@...    the reply to RCPT never comes
  hangonce+x@...    the first message to that address is kept (written out) but never answered,
                    as a server that took it before its client died; later ones are accepted
  anything else     accepted
"""

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import ssl

from aiosmtpd.smtp import SMTP, AuthResult

HOUR = 3600


class Handler:
    def __init__(self, maildir):
        self.maildir = maildir
        self.numbers = itertools.count(1)
        self.tempfails = {}  # address -> how many RCPTs it has already refused
        self.held = set()  # hangonce addresses whose first message was kept and never answered

    @staticmethod
    def behaviour(address):
        return address.split("@", 1)[0].split("+", 1)[0]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        behaviour = self.behaviour(address)
        if behaviour == "reject":
            return "550 5.1.1 No such user"
        if behaviour == "hangrcpt":
            await asyncio.sleep(HOUR)
        tempfail = re.fullmatch(r"tempfail-(\d+)", behaviour)
        if tempfail:
            refused = self.tempfails.get(address, 0)
            if refused < int(tempfail.group(1)):
                self.tempfails[address] = refused + 1
                return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if any(self.behaviour(address) == "hang" for address in envelope.rcpt_tos):
            await asyncio.sleep(HOUR)
        number = next(self.numbers)
        hold = [a for a in envelope.rcpt_tos if self.behaviour(a) == "hangonce" and a not in self.held]
        self.write(f"{number}.json", json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth_user": session.auth_data if session.authenticated else None,
            "tls": session.ssl is not None,
            "peer": "%s:%s" % session.peer[:2],
        }).encode())
        # The .eml last: a reader that sees it finds the envelope beside it.
        self.write(f"{number}.eml", envelope.original_content)
        if hold:
            self.held.update(hold)
            await asyncio.sleep(HOUR)
        return f"250 2.0.0 OK queued as {number}"

    def write(self, name, content):
        partial = os.path.join(self.maildir, "." + name)
        with open(partial, "wb") as file:
            file.write(content)
        os.replace(partial, os.path.join(self.maildir, name))


def authenticator_for(user, password, maildir):
    def authenticate(server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode(errors="replace")
        accepted = login == user and auth_data.password.decode(errors="replace") == password
        with open(os.path.join(maildir, "auth.log"), "a") as log:
            log.write(f"{mechanism} {login} {'ok' if accepted else 'refused'}\n")
        # handled=False: aiosmtpd itself answers a refusal with 535 5.7.8.
        return AuthResult(success=accepted, handled=False, auth_data=login)

    return authenticate


async def serve(arguments):
    options = {"hostname": "localhost", "enable_SMTPUTF8": True}
    if arguments.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(arguments.tls_cert, arguments.tls_key)
        options.update(tls_context=context, require_starttls=arguments.require_starttls)
    if arguments.auth:
        user, _, password = arguments.auth.partition(":")
        options.update(
            authenticator=authenticator_for(user, password, arguments.maildir),
            auth_required=True,
            # Without TLS (the tests of a server lacking STARTTLS) AUTH is offered in the clear.
            auth_require_tls=bool(arguments.tls_cert),
        )
    handler = Handler(arguments.maildir)
    loop = asyncio.get_running_loop()
    # aiosmtpd's Controller cannot start on port 0 (it connects to the port it was given to check
    # that it serves), so the listener is asyncio's, with aiosmtpd's SMTP protocol per connection.
    server = await loop.create_server(lambda: SMTP(handler, **options), host="127.0.0.1", port=arguments.port)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--require-starttls", action="store_true")
    parser.add_argument("--auth", help="USER:PASSWORD; AUTH PLAIN and LOGIN, required")
    arguments = parser.parse_args()
    if bool(arguments.tls_cert) != bool(arguments.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if arguments.require_starttls and not arguments.tls_cert:
        parser.error("--require-starttls needs --tls-cert and --tls-key")
    os.makedirs(arguments.maildir, exist_ok=True)
    asyncio.run(serve(arguments))


if __name__ == "__main__":
    main()
