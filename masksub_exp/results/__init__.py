"""The evidence page (docs/results.md): plan the sweeps, train them, write the page. A command, not the engine."""
