"""IMAP4rev1 (RFC 3501) and the extensions real clients use, on 143 (STARTTLS) and 993 (implicit TLS).

framing + parser (bytes -> commands), engine (the pure state machine), selected/fetch/search/message
(mailbox view, FETCH items, SEARCH keys), mimeview (the bridge to mailsuite.mime), backend (the store),
adapter (``build_factory(ctx, service)``, the Twisted protocol).  See docs/imap.md.
"""
