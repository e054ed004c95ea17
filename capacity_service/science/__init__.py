"""Pure computation: data, models, metrics, training. No database, no HTTP."""
