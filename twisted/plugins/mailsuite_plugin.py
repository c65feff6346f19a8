"""twistd plugin: ``twistd -n mailsuite [--config PATH]`` runs every mailsuite service in one process."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None,
                      "TOML config file (default: /etc/mailsuite/mailsuite.toml if it exists, else built-in defaults)"]]


@implementer(IServiceMaker, IPlugin)
class MailsuiteServiceMaker:
    tapname = "mailsuite"
    description = "mailsuite home mail server: SMTP, submission, relay, POP3 and IMAP over one Maildir store"
    options = Options

    def makeService(self, options: Any) -> Any:
        from mailsuite.config import ConfigError, load_settings
        from mailsuite.service import MailService, config_path

        try:
            settings = load_settings(config_path(options["config"]))
        except ConfigError as exc:
            print(f"mailsuite: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1)
        parent = getattr(options, "parent", None) or {}
        uid, gid = parent.get("uid"), parent.get("gid")
        run_as = None
        if uid is not None:
            import pwd
            run_as = (int(uid), int(gid) if gid is not None else pwd.getpwuid(int(uid)).pw_gid)
        from mailsuite.logtext import wants_stdout

        return MailService(settings, run_as=run_as, fast_log=wants_stdout(parent))


serviceMaker = MailsuiteServiceMaker()
