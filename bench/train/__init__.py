"""How one run trains: the step loop, caches and evaluation (`engine`), and one run from its
frozen config to its record (`run`)."""
