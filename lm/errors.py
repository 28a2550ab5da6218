class UserError(Exception):
    """Bad input (a path, a config key, a file) that the user can fix; the CLI prints it as one line."""
