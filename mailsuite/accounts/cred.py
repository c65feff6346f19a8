"""twisted.cred pieces shared by SMTP, POP3 and IMAP: a hashed-password checker and the mail realm.

The checker verifies in a thread (argon2id costs tens of milliseconds and 64 MiB; it must not stall the
reactor); the avatar is a ``MailAccount`` carrying the canonical user name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import threads
from zope.interface import Interface, implementer

__all__ = ["IMailAccount", "MailAccount", "PasswordChecker", "MailRealm", "make_portal"]


class IMailAccount(Interface):
    """An authenticated mail user."""


@implementer(IMailAccount)
@dataclass(frozen=True)
class MailAccount:
    user: str


@implementer(ICredentialsChecker)
class PasswordChecker:
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: Any) -> None:
        self.accounts = accounts

    def requestAvatarId(self, credentials: Any) -> Any:
        try:
            login = credentials.username.decode("utf-8")
            password = credentials.password.decode("utf-8")
        except UnicodeDecodeError:
            from twisted.internet import defer
            return defer.fail(error.UnauthorizedLogin("credentials are not UTF-8"))

        def checked(user: str | None) -> str:
            if user is None:
                raise error.UnauthorizedLogin("bad user name or password")
            return user

        # the users file is read (if changed) on this thread; only the hash runs in the pool
        self.accounts.users()
        return threads.deferToThread(self.accounts.check_password_sync, login, password).addCallback(checked)


@implementer(IRealm)
class MailRealm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, MailAccount, Any]:
        if IMailAccount not in interfaces:
            raise TypeError("mailsuite's realm only provides IMailAccount")
        user = avatarId.decode() if isinstance(avatarId, bytes) else avatarId
        return IMailAccount, MailAccount(user), lambda: None


def make_portal(accounts: Any) -> Portal:
    return Portal(MailRealm(), [PasswordChecker(accounts)])
