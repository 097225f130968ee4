"""Built-in plugin ee_demo: the whole seed pipeline on the embedded digits data."""
