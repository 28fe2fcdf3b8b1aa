"""Everything Ray: embedded or remote cluster, Tune launch, trial driver, results store, CLI."""
