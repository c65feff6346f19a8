"""Relay MTA: outbound SMTP for mail to other domains (and bounces to local senders).

- `dotstuff`: incremental dot-stuffing (RFC 5321 §4.5.2).
- `client`: the pure outbound SMTP client engine (EHLO, PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN, STARTTLS,
  AUTH).
- `queue`: the durable queue on disk, retry schedule, per-recipient status, bounces (`dsn`).
- `dns`: MX/A/AAAA routing with dnspython off the reactor thread (RFC 5321 §5.1, RFC 7505).
- `dsn`: RFC 3464 delivery status notifications.
- `deliver`: the Twisted side: connections, per-destination reuse and limits, smarthost mode.
- `service`: `RelayService` and `attach(ctx, parent)`, called by mailsuite/service.py.
- `admin`: the `mailsuite queue list|flush|delete|bounce` functions.
"""
