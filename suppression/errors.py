"""The one error base class; each front end maps it to a reply in one place."""


class OptgateError(Exception):
    """An error the user can cause; its message says what to do."""


class InvalidAddress(OptgateError):
    """An e-mail address that is not valid."""


class StoreError(OptgateError):
    """The store cannot be opened, read or written."""


class ConfigError(OptgateError):
    """The configuration names an unknown key or holds a value of the wrong type."""
