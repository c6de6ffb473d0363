"""The ``shoal`` command: one subcommand per component, plus demo and cluster install."""
