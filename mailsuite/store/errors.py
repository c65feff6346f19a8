"""Exceptions raised by the mail store (:mod:`mailsuite.store`)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class InvalidUser(StoreError, ValueError):
    """A user name that cannot be mapped safely to a directory."""


class InvalidMailboxName(StoreError, ValueError):
    """A mailbox name that is malformed (bad modified UTF-7) or unsafe (``..``, ``/``, NUL...)."""


class MailboxNotFound(StoreError, LookupError):
    """The mailbox does not exist (or was deleted/renamed while open)."""


class MailboxExists(StoreError):
    """CREATE or RENAME target already exists (RFC 3501 §6.3.3, §6.3.5)."""


class MessageNotFound(StoreError, KeyError):
    """No message with this UID in the mailbox (or its file vanished)."""
