"""The one error base class; each front end maps it to a reply in one place."""


class OptgateError(Exception):
    """An error the user can cause; its message says what to do."""


class InvalidAddress(OptgateError):
    """An e-mail address that is not valid."""


class StoreError(OptgateError):
    """The store cannot be opened, read or written."""


class ConfigError(OptgateError):
    """The configuration names an unknown key or holds a value of the wrong type."""


class StoreMissing(StoreError):
    """The store a command would use does not exist, or holds no optgate schema.

    Only ``optgate serve`` and ``optgate store migrate`` create a store: any other
    command writing to a new, empty one would record what the real store never sees.
    """

    def __init__(self, where: str, why: str = "") -> None:
        self.where = where
        super().__init__(
            f"no optgate store at {where}{why}: create it with `optgate store migrate` "
            "(or start `optgate serve`), or set [store] url to the store in use "
            "(`optgate config show` prints the settings and where they came from)"
        )
