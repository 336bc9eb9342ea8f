"""One module per subcommand: ``add_arguments(parser)`` and ``run(args) -> exit code``.

Modules here import heavy things (Prefect, scikit-image) inside ``run`` only.
"""
