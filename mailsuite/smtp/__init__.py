"""SMTP server: MX (25), submission (587, STARTTLS) and SMTPS (465).

``engine`` is the pure protocol state machine (RFC 5321 and its ESMTP extensions), ``address`` parses RFC 5321
paths, ``body`` collects DATA/BDAT content, ``delivery`` stores messages locally (trace headers, durable) or
queues them for the relay, ``adapter`` is the thin Twisted protocol that connects them.  See docs/smtp.md.
"""
