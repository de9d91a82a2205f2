class UserError(Exception):
    """A mistake in the user's input (missing artifact, bad path, unknown class...).

    The CLI prints its message as one line and exits with status 2, never a traceback.
    """
