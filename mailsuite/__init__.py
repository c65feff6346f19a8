"""mailsuite: a complete home mail server on Twisted.

SMTP (MX, submission, SMTPS), a relay MTA, POP3 and IMAP over one Maildir++ store, in one ``twistd`` process.
See docs/architecture.md for how the packages fit together.
"""

__version__ = "0.1.0"
