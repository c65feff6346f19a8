"""POP3 (RFC 1939) on 110 with STLS and on 995 with implicit TLS, over the shared Maildir store.

``engine`` holds the pure protocol state machine, ``dotstuff`` the incremental dot-stuffer for RETR/TOP, and
``adapter`` the twisted Protocol that runs the engine's actions against accounts and store.
"""
