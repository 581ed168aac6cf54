"""One exception type for bad user input: the CLI prints it as one line and exits non-zero."""


class ModcircuitError(ValueError):
    """A problem with what the user asked for (a name, a value, a file), stated in one line."""


def choice_error(what: str, value, allowed) -> ModcircuitError:
    allowed = ", ".join(sorted(str(a) for a in allowed))
    return ModcircuitError(f"unknown {what} {value!r}; allowed: {allowed}")
