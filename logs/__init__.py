"""The log listener: prints the `logs` topic exchange."""
