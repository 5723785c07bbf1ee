"""Bulk files: the formats optgate reads and writes, and the modules that do it.

    detect.py  which reader a file needs, guessed from its first records (auto)
    read.py    Reading: a byte stream -> rows, in flat memory, in a format
    write.py   export writers: suppressions and consent records; CSV cells neutralised

The format names live here, apart from the modules, so that the command line
lists them without loading the readers and writers.
"""

READ_FORMATS: tuple[str, ...] = (
    "auto",
    "csv",
    "jsonl",
    "plain",
    "sha256",
    "md5",
    "sendgrid",
    "mailchimp",
    "ses",
    "mailgun",
    "postmark",
)
WRITE_FORMATS: tuple[str, ...] = ("csv", "jsonl", "sha256", "md5")
CONSENT_FORMATS: tuple[str, ...] = ("csv", "jsonl")
